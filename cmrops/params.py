"""Strict loading of ``params.yaml`` sections into typed dataclasses.

Each stage declares a frozen dataclass of its parameters; :func:`load_section` builds it from one
section of the YAML file and rejects unknown keys and wrong types with a message that names the
file, the key path and what was expected. Nothing below ``cmrops.stages`` reads ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Every top-level section a params file may hold, in params.yaml's order. A section not listed
#: here is an error (a misspelled ``splt:`` must not run the stage on its defaults).
SECTIONS: tuple[str, ...] = (
    "schedule",
    "engine",
    "release",
    "collect",
    "preprocess",
    "align",
    "label",
    "clean",
    "split",
    "train",
    "evaluate",
    "ablation",
    "datacard",
)


class ParamsError(ValueError):
    """A params file or section is missing, malformed or has unknown / mistyped keys."""


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ParamsError(
            f"{p}: params file not found (run from the project root or pass --params)"
        )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParamsError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{p}: top level must be a mapping of sections")
    check_sections(data, str(p))
    return data


def check_sections(data: dict[str, Any], where: str) -> None:
    """Refuse top-level keys that are not sections, naming the nearest known one."""
    import difflib

    unknown = [k for k in data if k not in SECTIONS]
    if not unknown:
        return
    hints = []
    for key in unknown:
        near = difflib.get_close_matches(str(key), SECTIONS, n=1, cutoff=0.5)
        hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    raise ParamsError(
        f"{where}: unknown section(s) {', '.join(hints)}; the sections are: {', '.join(SECTIONS)}"
    )


def load_section(path: str | os.PathLike[str], section: str, cls: type[T]) -> T:
    """Build ``cls`` from section ``section`` of the YAML file at ``path`` (missing = defaults)."""
    data = read_yaml(path)
    raw = data.get(section, {})
    return from_dict(cls, raw if raw is not None else {}, where=f"{path}:{section}")


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """Recursively convert plain YAML data into dataclass ``cls``; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ParamsError(f"{where}: {e}") from e
    except ValueError as e:  # __post_init__ validation
        raise ParamsError(f"{where}: {e}") from e


def _is_mapping_type(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ParamsError as e:
                errors.append((arg, str(e)))
        # a mapping meant one of the mapping types: its own error says what is wrong inside
        shaped = [m for a, m in errors if isinstance(value, dict) == _is_mapping_type(a)]
        if len(shaped) == 1:
            raise ParamsError(shaped[0])
        raise ParamsError(
            errors[0][1] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}"
        )
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return origin(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__}")
        kt, vt = args or (Any, Any)
        return {_convert(kt, k, where): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ParamsError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value
