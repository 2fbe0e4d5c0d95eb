"""JSON wire format of the game topics: {"type": "<Record>", ...fields}.

decode() checks every field's JSON type against the record's annotations, so a malformed
message is refused here (and sent to game.dlq by the consuming agent) instead of corrupting
a table or the database further down.
"""
from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from typing import Any

from streams.events import ALL_RECORDS as GAME_RECORDS
from streams.events import Message
from streams.jackpot_events import JACKPOT_RECORDS

ALL_RECORDS = GAME_RECORDS + JACKPOT_RECORDS
RECORDS: dict[str, type[Message]] = {cls.__name__: cls for cls in ALL_RECORDS}


class DecodeError(ValueError):
    """The message is not a valid event of the contract."""


def encode(record: Message) -> bytes:
    data = record.asdict()
    data["type"] = type(record).__name__
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


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
        data = json.loads(raw)
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
