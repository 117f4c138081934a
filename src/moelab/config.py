"""Typed dataclass configs: strict loading from dicts/YAML, dotted overrides, validation.

Every stage's config is a tree of dataclasses inheriting :class:`Config`. Loading is strict:
an unknown key, a value of the wrong type, or a value that fails a component's ``validate()``
raises :class:`ConfigError` naming the dotted field path (``model.moe.top_k``). Downstream
code only ever sees plain typed dataclasses, never dicts.

A dataclass that defines ``preset(name) -> dict`` accepts a ``preset:`` key: the named preset
is loaded first and the other keys override it (``model: {preset: tiny-olmoe, num_layers: 2}``).

What this module does not know: any particular component. It is the plumbing only.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T", bound="Config")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A config value is unknown, mistyped or inconsistent. The message names the dotted path."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints widen to floats)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(path, f"must not be null (expected {_type_name(tp)})")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(path, f"{value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(path, f"{value!r} is not one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_tp, path): _coerce(v, val_tp, _join(path, str(k)))
            for k, v in value.items()
        }
    if value is None:
        raise ConfigError(path, f"must not be null (expected {_type_name(tp)})")
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # PyYAML reads 3e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(path, f"expected {tp.__name__}, got {value!r}")
    return value


def _from_dict(cls: type, data: dict, path: str) -> Any:
    data = dict(data)
    preset_fn = getattr(cls, "preset", None)
    if "preset" in data and callable(preset_fn):
        name = data.pop("preset")
        try:
            base = preset_fn(name)
        except KeyError as err:
            raise ConfigError(_join(path, "preset"), str(err.args[0])) from None
        data = deep_merge(to_dict(base) if dataclasses.is_dataclass(base) else base, data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            _join(path, unknown[0]),
            f"unknown key (valid keys of {cls.__name__}: {', '.join(sorted(fields))})",
        )
    kwargs = {name: _coerce(value, hints[name], _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(path or cls.__name__, str(err)) from None


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated by ``override``, merging nested dicts key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(obj: Any) -> Any:
    """Plain dict/list/scalar form of a config tree (what YAML and JSON store)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(item, "an override must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key, "empty key in override")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(key, f"cannot parse value {raw!r}: {err}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted ``key=value`` overrides to a nested dict (before type checking)."""
    data = dict(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(keys[: i + 1]), "is not a section; cannot set a sub-key")
            node[key] = child = dict(child)
            node = child
        node[keys[-1]] = value
    return data


def validate_tree(obj: Any, path: str = "") -> None:
    """Call ``validate(path)`` on every dataclass in the tree, children first."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        validate_tree(getattr(obj, f.name), _join(path, f.name))
    check = getattr(obj, "validate", None)
    if callable(check):
        check(path)


@dataclasses.dataclass
class Config:
    """Base for every config dataclass: strict loading, overrides, YAML round trip."""

    @classmethod
    def from_dict(cls: type[T], data: dict, overrides: list[str] | None = None) -> T:
        if not isinstance(data, dict):
            raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}")
        data = apply_overrides(data, overrides or [])
        obj = _from_dict(cls, data, "")
        validate_tree(obj)
        return obj

    @classmethod
    def from_yaml(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("", f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError("", f"{path} is not valid YAML: {err}") from None
        return cls.from_dict(data, overrides)

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self: T, **changes: Any) -> T:
        """A validated copy with some top-level fields changed."""
        obj = dataclasses.replace(self, **changes)
        validate_tree(obj)
        return obj
