"""The base of every record of this project (events, commands, table values): a Faust record
whose fields are plain instance attributes.

Faust puts a FieldDescriptor on the class for each field, so every `record.field = value` (each
field of every __init__) is a Python-level __set__ call with its prepare_value; with coercion
off (our records never coerce: streams/codec.py checks the types of what it decodes) that call
does nothing but cost. A record of 14 fields took ~12 µs to build, ~1.4 µs without the
descriptors, and a bet builds four or five of them (crash-bench --profile: __init__ and __set__
~7 % of a worker's samples). So each concrete class drops its descriptors once it is made: the
field's default stays a plain class attribute (what Faust reads for a subclass's defaults), and
`_options.descriptors`, which Faust's asdict, from_data and validation use, is left whole.
"""
from __future__ import annotations

from typing import Any

import faust
from faust.models.fields import FieldDescriptor

__all__ = ["PlainRecord"]


class PlainRecord(faust.Record, abstract=True):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, descriptor in (cls._options.descriptors or {}).items():     # None: abstract
            if not isinstance(cls.__dict__.get(name), FieldDescriptor):
                continue
            if descriptor.coerce or descriptor.tag or descriptor.lazy_coercion:
                continue                     # a field whose setter does something: keep it
            if descriptor.required:
                delattr(cls, name)
            else:
                setattr(cls, name, descriptor.default)
