"""The one codec of every process boundary: typed values (frozen dataclasses) to JSON and back.

Decoding checks every field against its type annotation, so a message from another process or
another machine is either a well-formed value or a `ProtocolError` naming the bad field; nothing
received is trusted unchecked, and nothing is ever unpickled. Standard library only: runners and
the benchmark import it where pydantic is not installed.

Supported annotations: the JSON scalars (str, int, float, bool, None), `Literal`, enums,
`tuple[X, ...]`, `tuple[X, Y]`, `list[X]`, `dict[str, X]`, unions (`X | None`), named tuples
and dataclasses. A dataclass with a `TAG` class variable is a *message*: its JSON carries
`"type": TAG`, and a union of messages decodes by that tag, so one stream can carry several
kinds of message and an unknown kind is refused by name.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from tandem.errors import TandemError

T = TypeVar("T")
TAG_FIELD = "type"


class ProtocolError(TandemError):
    """A message that is not valid JSON, names an unknown kind, or has a missing or bad field."""


def to_json(value: Any) -> Any:
    """`value` as JSON-ready Python data (dicts, lists, strings, numbers, booleans, None)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {field.name: to_json(getattr(value, field.name)) for field in _fields(type(value))}
        tag = getattr(type(value), "TAG", None)
        if tag is not None:
            data = {TAG_FIELD: tag, **data}
        return data
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    raise TypeError(f"cannot encode a {type(value).__name__} for the wire")


def from_json(kind: Any, data: Any, path: str = "message") -> Any:
    """The value of type `kind` that `data` (JSON-ready Python data) describes; raises
    ProtocolError naming the first field that does not fit."""
    return _decoder(kind)(data, path)


def encode(value: Any) -> bytes:
    """One value as compact UTF-8 JSON."""
    return json.dumps(to_json(value), separators=(",", ":"), allow_nan=False).encode()


def decode(kind: type[T] | Any, raw: bytes | str) -> T:
    """The value of type `kind` in `raw` (UTF-8 JSON); raises ProtocolError when it is not one."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"a message that is not JSON: {error}") from None
    return from_json(kind, data)


def message_kinds(union: Any) -> dict[str, type]:
    """Tag -> message class of every member of a union of messages."""
    members = typing.get_args(union) or (union,)
    return {member.TAG: member for member in members}


# --- decoders, built once per annotation -------------------------------------------------------

Decoder = Callable[[Any, str], Any]


def _fail(path: str, expected: str, data: Any) -> ProtocolError:
    shown = json.dumps(data)[:80] if _jsonable(data) else type(data).__name__
    return ProtocolError(f"{path}: expected {expected}, got {shown}")


def _jsonable(data: Any) -> bool:
    try:
        json.dumps(data)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(field for field in dataclasses.fields(cls) if field.init)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _decoder(kind: Any) -> Decoder:
    if kind is Any:
        return lambda data, path: data
    if kind is type(None) or kind is None:
        return _exact(lambda d: d is None, "null")
    if kind is bool:
        return _exact(lambda d: isinstance(d, bool), "true or false")
    if kind is int:
        return _exact(lambda d: isinstance(d, int) and not isinstance(d, bool), "an integer")
    if kind is float:
        return _float
    if kind is str:
        return _exact(lambda d: isinstance(d, str), "a string")
    origin = typing.get_origin(kind)
    arguments = typing.get_args(kind)
    if origin is typing.Literal:
        return _literal(arguments)
    if origin in (typing.Union, types.UnionType):
        return _union(arguments)
    if origin is tuple:
        return _tuple(arguments)
    if origin is list:
        return _list(arguments[0] if arguments else Any)
    if origin is dict:
        return _dict(arguments[1] if arguments else Any)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return _enum(kind)
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
        return _named_tuple(kind)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _dataclass(kind)
    raise TypeError(f"the codec cannot decode {kind!r}")


def _exact(check: Callable[[Any], bool], expected: str) -> Decoder:
    def decode_exact(data: Any, path: str) -> Any:
        if not check(data):
            raise _fail(path, expected, data)
        return data

    return decode_exact


def _float(data: Any, path: str) -> float:
    if isinstance(data, bool) or not isinstance(data, int | float):
        raise _fail(path, "a number", data)
    return float(data)


def _literal(values: tuple[Any, ...]) -> Decoder:
    def decode_literal(data: Any, path: str) -> Any:
        if isinstance(data, bool) or data not in values:
            raise _fail(path, "one of " + ", ".join(json.dumps(v) for v in values), data)
        return data

    return decode_literal


def _union(members: tuple[Any, ...]) -> Decoder:
    tagged = {m.TAG: m for m in members if isinstance(m, type) and hasattr(m, "TAG")}
    others = [m for m in members if m not in tagged.values()]

    def decode_union(data: Any, path: str) -> Any:
        if tagged and isinstance(data, dict) and TAG_FIELD in data:
            member = tagged.get(data[TAG_FIELD])
            if member is None:
                raise ProtocolError(
                    f"{path}: unknown message type {data[TAG_FIELD]!r}; known: {', '.join(sorted(tagged))}"
                )
            return _decoder(member)(data, path)
        errors = []
        for member in others:
            try:
                return _decoder(member)(data, path)
            except ProtocolError as error:
                errors.append(str(error))
        if not others:
            raise _fail(path, f"a message with a {TAG_FIELD!r} of {', '.join(sorted(tagged))}", data)
        raise ProtocolError(
            errors[0] if len(errors) == 1 else f"{path}: matches no form: {'; '.join(errors)}"
        )

    return decode_union


def _tuple(arguments: tuple[Any, ...]) -> Decoder:
    if len(arguments) == 2 and arguments[1] is Ellipsis:
        item = _decoder(arguments[0])

        def decode_variadic(data: Any, path: str) -> tuple:
            if not isinstance(data, list | tuple):
                raise _fail(path, "a list", data)
            return tuple(item(value, f"{path}[{index}]") for index, value in enumerate(data))

        return decode_variadic
    items = [_decoder(argument) for argument in arguments]

    def decode_fixed(data: Any, path: str) -> tuple:
        if not isinstance(data, list | tuple) or len(data) != len(items):
            raise _fail(path, f"a list of {len(items)}", data)
        return tuple(
            item(value, f"{path}[{i}]") for i, (item, value) in enumerate(zip(items, data, strict=True))
        )

    return decode_fixed


def _list(argument: Any) -> Decoder:
    item = _decoder(argument)

    def decode_list(data: Any, path: str) -> list:
        if not isinstance(data, list):
            raise _fail(path, "a list", data)
        return [item(value, f"{path}[{index}]") for index, value in enumerate(data)]

    return decode_list


def _dict(argument: Any) -> Decoder:
    item = _decoder(argument)

    def decode_dict(data: Any, path: str) -> dict:
        if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
            raise _fail(path, "an object", data)
        return {key: item(value, f"{path}.{key}") for key, value in data.items()}

    return decode_dict


def _enum(kind: type[enum.Enum]) -> Decoder:
    def decode_enum(data: Any, path: str) -> enum.Enum:
        try:
            return kind(data)
        except ValueError:
            allowed = ", ".join(json.dumps(member.value) for member in kind)
            raise _fail(path, f"one of {allowed}", data) from None

    return decode_enum


def _named_tuple(kind: type) -> Decoder:
    hints = typing.get_type_hints(kind)
    items = [_decoder(hints[name]) for name in kind._fields]  # type: ignore[attr-defined]

    def decode_named(data: Any, path: str) -> Any:
        if not isinstance(data, list | tuple) or len(data) != len(items):
            raise _fail(path, f"a list of {len(items)}", data)
        values = [
            item(value, f"{path}[{i}]") for i, (item, value) in enumerate(zip(items, data, strict=True))
        ]
        return kind(*values)

    return decode_named


def _dataclass(kind: type) -> Decoder:
    fields = _fields(kind)
    tag = getattr(kind, "TAG", None)

    def decode_dataclass(data: Any, path: str) -> Any:
        if not isinstance(data, dict):
            raise _fail(path, f"an object ({kind.__name__})", data)
        if tag is not None and data.get(TAG_FIELD, tag) != tag:
            raise ProtocolError(f"{path}: expected a {tag!r} message, got {data.get(TAG_FIELD)!r}")
        known = {field.name for field in fields}
        unknown = set(data) - known - ({TAG_FIELD} if tag is not None else set())
        if unknown:
            raise ProtocolError(f"{path}: unknown field(s) {', '.join(sorted(unknown))} in {kind.__name__}")
        hints = _hints(kind)
        values = {}
        for field in fields:
            if field.name in data:
                values[field.name] = _decoder(hints[field.name])(data[field.name], f"{path}.{field.name}")
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{path}: missing field {field.name!r} in {kind.__name__}")
        try:
            return kind(**values)
        except (TypeError, ValueError, TandemError) as error:
            raise ProtocolError(f"{path}: {error}") from None

    return decode_dataclass
