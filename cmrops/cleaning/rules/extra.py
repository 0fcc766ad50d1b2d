"""Rules of your own: a :class:`~cmrops.cleaning.rules.base.Rule` subclass named in params.

``clean.extra_rules`` lists them, each ``{rule: SPEC, params: {...}}``:

* ``SPEC`` is ``"module:Class"`` (any importable module), or the name a package registers in the
  entry-point group ``cmrops.cleaning_rules`` (in its ``pyproject.toml``:
  ``[project.entry-points."cmrops.cleaning_rules"]`` ``my_rule = "mypkg.rules:MyRule"``);
* ``params`` is loaded strictly into the rule's ``params_type`` dataclass, as every section of
  ``params.yaml`` is: an unknown key or a wrong type is an error that names the key.

Installing a package never adds a rule to a run by itself: a rule runs when params name it, so
``dvc repro`` sees the change. The extra rules run after the built-in per-sample rules, in the
order listed, and before the duplicate resolution; their names must differ from the built-in
rules' and from each other.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from cmrops.cleaning.rules.base import Rule

#: The entry-point group packages register their rules in.
ENTRY_POINT_GROUP = "cmrops.cleaning_rules"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ExtraRule:
    """One entry of ``clean.extra_rules``: the rule (``"module:Class"`` or an entry-point name)
    and its params (checked against the rule's params dataclass when loaded)."""

    rule: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        build(self)  # strict: a rule that cannot be loaded or unknown params fail the loading

    def __hash__(self) -> int:
        return hash((self.rule, repr(sorted(self.params.items()))))


def load_class(spec: str) -> type[Rule[Any, Any]]:
    """The rule class named by ``spec``: ``"module:Class"``, else an entry point's name."""
    if ":" in spec:
        module, _, name = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"rule {spec!r} cannot be loaded ({e})") from e
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not found:
            known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
            raise ValueError(
                f"rule {spec!r}: not 'module:Class' and no entry point of that name in group "
                f"{ENTRY_POINT_GROUP} (installed: {', '.join(known) or 'none'})"
            )
        try:
            cls = found[0].load()
        except (ImportError, AttributeError) as e:
            raise ValueError(f"rule {spec!r} ({found[0].value}) cannot be loaded ({e})") from e
    if not (inspect.isclass(cls) and issubclass(cls, Rule)) or inspect.isabstract(cls):
        raise ValueError(
            f"rule {spec!r}: {cls!r} is not a concrete subclass of cmrops.cleaning.rules.Rule"
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"rule {spec!r}: its name must be lower_snake_case, got {name!r}")
    if not dataclasses.is_dataclass(getattr(cls, "params_type", None)):
        raise ValueError(f"rule {spec!r}: params_type must be a dataclass")
    return cls


def build(extra: ExtraRule) -> Rule[Any, Any]:
    """The rule of one ``extra_rules`` entry, built from its params (strictly)."""
    from cmrops.params import from_dict

    cls = load_class(extra.rule)
    params = from_dict(cls.params_type, extra.params, where=f"clean.extra_rules[{cls.name}]")
    return cls(params)
