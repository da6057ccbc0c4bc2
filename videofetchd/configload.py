"""The generic half of the configuration: values with units, and one loader for any dataclass tree.

``config.py`` declares the settings (frozen dataclasses whose field metadata gives a kind, a unit
and a range) and checks what crosses fields; this module turns YAML values into those
dataclasses without knowing any setting: durations (``90s``, ``2m``, ``1h30m``), sizes
(``512MiB``), lists of nested mappings, and errors that name the file and the key path.
Imports nothing from the package but ``errors``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4,
               "tib": 1024**4}
#: what a size error lists (a library disk is counted in TB, so min_free_space may be too)
SIZE_HINT = "expected a size such as 512MiB or 2TiB (units: B, kB, KiB, MB, MiB, GB, GiB, TB, TiB; case ignored)"


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``90s``, ``2m``, ``1h30m``, ``500ms``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 2m or 6h")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", "", text).strip():
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        raise ValueError("expected a duration such as 90s, 2m or 6h")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``512MiB``."""
    if isinstance(value, bool):
        raise ValueError(SIZE_HINT)
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(SIZE_HINT)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


class Loader:
    """Builds a dataclass tree from a YAML mapping: unknown keys (with a "did you mean"), wrong
    types and out-of-range values are ConfigErrors naming the file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {problem}")

    def build(self, cls: type, data: Any, path: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error(path or "(top level)", f"expected a mapping, got {_show(data)}")
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        for key in data:
            if key not in fields:
                near = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                known = ", ".join(fields)
                raise self.error(_join(path, str(key)), f"unknown key{hint}; known keys: {known}")
        values = {}
        for name, f in fields.items():
            if name in data:
                values[name] = self.convert(hints[name], f, data[name], _join(path, name))
        return cls(**values)

    def convert(self, hint: Any, f: dataclasses.Field[Any], value: Any, path: str) -> Any:
        kind = f.metadata.get("kind")
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, path)  # type: ignore[arg-type]
        item = (get_args(hint) or (None,))[0]
        if get_origin(hint) is tuple and dataclasses.is_dataclass(item):
            if not isinstance(value, list):
                raise self.error(path, f"expected a list of mappings, got {_show(value)}")
            return tuple(self.build(item, v, f"{path}[{i}]") for i, v in enumerate(value))  # type: ignore[arg-type]
        if kind == "mode" and isinstance(value, int) and not isinstance(value, bool):
            value = format(value, "04o")  # YAML 1.1 read an unquoted 0660 as the octal number 432
        try:
            if kind == "duration":
                result: Any = parse_duration(value)
            elif kind == "size":
                result = parse_size(value)
            else:
                result = _coerce(hint, value)
        except ValueError as exc:
            bound = "" if kind else _bound(f)
            raise self.error(path, f"{exc}{bound}, got {_show(value)}") from None
        if isinstance(result, float) and not math.isfinite(result):
            raise self.error(path, f"expected a finite value, got {_show(value)}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if (lo is not None and result < lo) or (hi is not None and result > hi):
            what = {"duration": "a duration", "size": "a size"}.get(kind or "") or \
                {int: "an integer", float: "a number"}.get(hint, "a value")
            raise self.error(path, f"expected {what}{_bound(f)}, got {_show(value)}")
        return result


def _bound(f: dataclasses.Field[Any]) -> str:
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and hi is not None:
        return f" between {lo:g} and {hi:g}"
    if lo is not None:
        return f" >= {lo:g}"
    return ""


def _coerce(hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return _coerce(next(a for a in get_args(hint) if a is not type(None)), value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError("expected a string")
        return str(value)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping")
        return dict(value)
    raise ValueError(f"unsupported type {hint}")  # a bug in a dataclass declaration


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
