"""JSON wire format of the game topics: {"type": "<Record>", ...fields}.

decode() checks every field's JSON type against the record's annotations, so a malformed
message is refused here (and sent to game.dlq by the consuming agent) instead of corrupting
a table or the database further down.

Every message also carries its type in a Kafka header (`type`), so that a consumer skips the
events it does not read without decoding them (game.bet is read by three consumers, each
wanting a few of its types: DESIGN section 14's "skip unread").

JSON is orjson, the stdlib's codec as the fallback for what orjson refuses (integers beyond 64
bits: such a message is still decoded and then refused by the rules with a reason, as before).
orjson rather than msgspec: the records stay Faust records (tables, agents and tests use them as
such) and only the bytes<->dict step is replaced; orjson does that step several times faster
than the stdlib and emits the same compact UTF-8 (measured by crash-bench, see docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from typing import Any

import orjson

from streams.events import ALL_RECORDS as GAME_RECORDS
from streams.events import Message
from streams.jackpot_events import JACKPOT_RECORDS

ALL_RECORDS = GAME_RECORDS + JACKPOT_RECORDS
RECORDS: dict[str, type[Message]] = {cls.__name__: cls for cls in ALL_RECORDS}


TYPE_HEADER = "type"


class DecodeError(ValueError):
    """The message is not a valid event of the contract."""


def encode(record: Message) -> bytes:
    data = record.asdict()
    data["type"] = type(record).__name__
    try:
        return orjson.dumps(data)
    except TypeError:               # an integer beyond 64 bits: the stdlib writes it
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def type_header(record: Message) -> list[tuple[str, bytes]]:
    """The Kafka headers of a message carrying `record`."""
    return [(TYPE_HEADER, type(record).__name__.encode())]


def header_type(headers: Any) -> bytes | None:
    """The `type` header of a consumed message (aiokafka: a tuple of pairs; Faust: a list or dict)."""
    if not headers:
        return None
    if isinstance(headers, dict):
        return headers.get(TYPE_HEADER)
    for name, value in headers:
        if name == TYPE_HEADER:
            return value
    return None


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits; the stdlib does not (and refuses the same
        # malformed JSON as orjson otherwise)
        return json.loads(raw)


def _checker(annotation: Any) -> Callable[[Any], bool]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        inner = [_checker(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return lambda v: v is None or any(check(v) for check in inner)
    if annotation is bool:
        return lambda v: isinstance(v, bool)
    if annotation is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if annotation is str:
        return lambda v: isinstance(v, str)
    if origin in (dict, dict) or annotation in (dict, dict):
        return lambda v: isinstance(v, dict)
    if origin in (list, list):
        return lambda v: isinstance(v, list)
    return lambda v: True


_VALIDATORS: dict[type[Message], list[tuple[str, bool, Callable[[Any], bool]]]] = {
    cls: [(name, name in cls._options.defaults, _checker(annotation))
          for name, annotation in cls._options.fields.items()]
    for cls in ALL_RECORDS
}


def decode(raw: bytes | str | None, expected: tuple[type[Message], ...] | None = None) -> Message:
    """Parse and validate one message; raises DecodeError with a reason."""
    if raw is None:
        raise DecodeError("empty message (tombstone)")
    try:
        data = _loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecodeError(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise DecodeError("not a JSON object")
    type_name = data.pop("type", None)
    cls = RECORDS.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise DecodeError(f"unknown type {type_name!r}")
    if expected is not None and not issubclass(cls, expected):
        raise DecodeError(f"{type_name} does not belong on this topic")
    fields = {}
    for name, optional, check in _VALIDATORS[cls]:
        if name not in data:
            if not optional:
                raise DecodeError(f"{type_name}.{name} is missing")
            continue
        value = data[name]
        if not check(value):
            raise DecodeError(f"{type_name}.{name} has the wrong type ({type(value).__name__})")
        fields[name] = value
    return cls(**fields)
