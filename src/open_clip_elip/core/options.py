"""Typed option specs: a family declares its options once, as ``{name: kind}`` (``FamilyCLIP.option_spec``), and
``check_options`` checks a config block against it, whether it comes from a JSON model config, a per-call
``create_model(..., <family>_cfg={...})`` or ``apply_<family>(model, **options)``. A value of the wrong type or
out of range is refused with the option, the value and what is allowed (``"merge": "false"`` is a string, not a
boolean). Checks that need the tower (a layout summing to its depth, one ``r`` per layer) stay with the family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping, Tuple


class Refused(Exception):
    """A value a kind does not accept; the message, if any, says which part (``item 2``)."""


class Kind:
    """What an option accepts: ``allowed`` says it in words, ``convert`` returns the value as the family stores it
    (lists as tuples, ratios as floats) or raises ``Refused``."""

    allowed: str = ""

    def convert(self, value: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Boolean(Kind):
    allowed = "true or false (a boolean, not a string or a number)"

    def convert(self, value):
        if not isinstance(value, bool):
            raise Refused()
        return value


@dataclass(frozen=True)
class Count(Kind):
    """An integer (not a boolean) of at least ``minimum``."""

    minimum: int = 0

    @property
    def allowed(self) -> str:
        return f"an integer >= {self.minimum}"

    def convert(self, value):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < self.minimum:
            raise Refused()
        return int(value)


@dataclass(frozen=True)
class Ratio(Kind):
    """A real number (not a boolean) in ``(low, high]`` (``closed_low``: ``[low, high]``), stored as a float."""

    low: float = 0.0
    high: float = 1.0
    closed_low: bool = False

    @property
    def allowed(self) -> str:
        return f"a number in {'[' if self.closed_low else '('}{self.low:g}, {self.high:g}]"

    def convert(self, value):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise Refused()
        if not (self.low <= value if self.closed_low else self.low < value) or value > self.high:
            raise Refused()
        return float(value)


@dataclass(frozen=True)
class Choice(Kind):
    values: Tuple[str, ...]

    @property
    def allowed(self) -> str:
        return f"one of {list(self.values)}"

    def convert(self, value):
        if not isinstance(value, str) or value not in self.values:
            raise Refused()
        return value


@dataclass(frozen=True)
class ListOf(Kind):
    """A list (or tuple) of values of one kind, stored as a tuple; lengths that depend on the tower are the
    family's to check."""

    item: Kind

    @property
    def allowed(self) -> str:
        return f"a list, each item {self.item.allowed}"

    def convert(self, value):
        if not isinstance(value, (list, tuple)):
            raise Refused()
        items = []
        for i, item in enumerate(value):
            try:
                items.append(self.item.convert(item))
            except Refused:
                raise Refused(f"item {i}: {item!r}") from None
        return tuple(items)


@dataclass(frozen=True)
class AnyOf(Kind):
    """The first of ``kinds`` that accepts the value."""

    kinds: Tuple[Kind, ...]

    @property
    def allowed(self) -> str:
        return ", or ".join(kind.allowed for kind in self.kinds)

    def convert(self, value):
        for kind in self.kinds:
            try:
                return kind.convert(value)
            except Refused:
                continue
        raise Refused()


@dataclass(frozen=True)
class Default(Kind):
    """``kind``, or None (JSON null) for the family's default, which depends on the tower."""

    kind: Kind

    @property
    def allowed(self) -> str:
        return f"{self.kind.allowed}, or null for the default"

    def convert(self, value):
        return None if value is None else self.kind.convert(value)


Spec = Mapping[str, Kind]


def check_options(block: str, spec: Spec, options: Mapping[str, Any]) -> dict:
    """``options`` checked against ``spec`` and converted (``convert`` of each kind): ValueError naming an unknown
    option and the accepted ones, or an option, its value and what it allows."""
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise ValueError(f"{block}: unknown option(s) {unknown}; accepted options are {list(spec)}")
    checked = {}
    for name, value in options.items():
        try:
            checked[name] = spec[name].convert(value)
        except Refused as refused:
            which = f" ({refused})" if str(refused) else ""
            raise ValueError(f"{block}.{name} must be {spec[name].allowed}; got {value!r}{which} "
                             f"({type(value).__name__})") from None
    return checked
