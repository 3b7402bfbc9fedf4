"""Frozen dataclass configs to and from JSON-ready dicts: what a run directory records and a loader rebuilds."""

from __future__ import annotations

import dataclasses
import pathlib
import types
import typing
from typing import Any


def require(config: Any, checks: dict[str, tuple[bool, str]], prefix: str = "") -> None:
    """Raises ValueError naming the first field whose value cannot work.

    `checks` maps a field name (dotted for nested configs) to (ok, what is allowed);
    `prefix` is where the config sits on the command line (`agent.`).
    """
    for name, (ok, allowed) in checks.items():
        if not ok:
            value = config
            for part in name.split("."):
                value = getattr(value, part)
            raise ValueError(f"{prefix}{name}={value!r} cannot work: it must be {allowed}.")


def to_dict(config: Any) -> dict:
    """Nested plain values (tuples as lists, paths as strings), ready for json.dumps."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, pathlib.PurePath):
            return str(value)
        return value

    return plain(config)


def from_dict(cls: type, values: dict) -> Any:
    """Rebuilds `cls` from `to_dict`'s output; an unknown key is an error that names it."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}; its fields are {sorted(names)}.")
    return cls(**{name: _coerce(hints[name], value) for name, value in values.items()})


def with_defaults(cls: type, record: dict) -> dict:
    """A saved `to_dict` record of `cls` with every field added to `cls` since it was written set to
    its default (a new field's default keeps the behaviour of the code before it), so that a run
    saved by an older version compares equal to the same config now. A record that no longer
    builds (a field removed since, a value no longer allowed) comes back as it was."""
    try:
        return to_dict(from_dict(cls, record))
    except (TypeError, ValueError):
        return record


def _coerce(hint, value):
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin is tuple:
        return tuple(value)
    if hint is pathlib.Path:
        return pathlib.Path(value)
    return value
