"""Typed dataclass configs: YAML files for the defaults you change, ``key=value`` for the rest.

Every config in stormvl is a (possibly nested) dataclass whose fields carry defaults and a
one-line docstring in a comment. ``load_config`` reads a YAML file, applies dotted overrides
(``train.lr=1e-4``), checks types, and reports *every* problem in one ``ConfigError`` so a
user fixes a config in one round trip. Unknown keys are an error (a typo must never be a
silently ignored setting).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stormvl.errors import ConfigError
from stormvl.io import read_text

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Convert ``value`` to the annotated type ``tp``; record a problem instead of raising."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], where, problems)
        for a in inner:  # first type that accepts the value without a problem
            trial: list[str] = []
            out = _coerce(value, a, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: {value!r} matches none of {[_type_name(a) for a in inner]}")
        return value
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):  # "a,b,c" from the command line
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
            return tp()
        return _build(tp, value, where, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        problems.append(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            problems.append(f"{where}: expected an integer, got {value!r}")
            return value
        if isinstance(value, int):
            return value
        try:
            f = float(value)
            if f == int(f):
                return int(f)
        except (TypeError, ValueError):
            pass
        problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
    if tp is str:
        if isinstance(value, (dict, list)):
            problems.append(f"{where}: expected a string, got {value!r}")
            return value
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def _build(cls: type[T], data: dict, where: str, problems: list[str]) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f" (did you mean {sorted(close)}?)" if close else ""
            problems.append(f"{where}{'.' if where else ''}{key}: unknown key{hint}")
    kwargs = {}
    before = len(problems)
    for f in dataclasses.fields(cls):
        if f.init and f.name in data:
            path = f"{where}.{f.name}" if where else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], path, problems)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where or cls.__name__}: {exc}")
        return cls()
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            found = check() or []
        except (TypeError, ValueError, AttributeError):
            # a field already failed its type check; validate() may assume good types
            if len(problems) == before:
                raise
            found = []
        parent, _, section = where.rpartition(".")
        for p in found:
            # validate() may name fields from its own section ("data.num_workers"), as its
            # direct callers read them; nested, that section already ends ``where``
            if section and p.startswith(f"{section}."):
                problems.append(f"{parent}{'.' if parent else ''}{p}")
            else:
                problems.append(f"{where}{'.' if where else ''}{p}")
    return obj


def parse_overrides(items: Sequence[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is both a value and a section")
        node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Build ``cls`` from a plain dict; raises ConfigError listing every problem."""
    problems: list[str] = []
    obj = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return obj


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (optional) plus ``key=value`` overrides.

    Raises:
        ConfigError: missing/unparseable file, unknown keys, wrong types or failed
            ``validate()`` checks; all problems are listed in one message.
    """
    data: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(read_text(p, ConfigError)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data, source)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML/JSON-safe data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (beside checkpoints and results)."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
