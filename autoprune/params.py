"""Searchable parameters: the three shapes a value can take in a space file.

Every searchable setting in a space file is written in one of three ways:

* a **scalar** is fixed: ``steps: 5`` (not a search dimension);
* a **list** of names or booleans is a categorical choice: ``scorer: [magnitude, taylor]``;
* a **range** is ``[low, high]`` or ``{low: 1.0e-4, high: 0.1, log: true}`` for numbers.

A categorical choice among numbers is written ``{choices: [1, 2, 5]}`` so that a two-number
list always means a range. :class:`Param` holds one parsed value; :func:`parse_param` builds it
from the raw YAML value and raises ``ValueError`` with a message saying what is allowed (the
space loader adds the file and the key path).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

ParamKind = Literal["fixed", "choice", "range"]
ValueType = Literal["float", "int", "bool", "name"]


@dataclass(frozen=True)
class Param:
    """One searchable (or fixed) value of a search space.

    Attributes:
        kind: ``fixed`` (one value), ``choice`` (categorical) or ``range`` (numeric interval).
        value_type: ``float``, ``int``, ``bool`` or ``name``.
        value: the value when ``kind == "fixed"``.
        choices: the options when ``kind == "choice"``.
        low, high, log: the interval when ``kind == "range"`` (both ends included).
    """

    kind: ParamKind
    value_type: ValueType
    value: Any = None
    choices: tuple[Any, ...] = field(default_factory=tuple)
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def searched(self) -> bool:
        """Whether this parameter is a search dimension (more than one possible value)."""
        if self.kind == "choice":
            return len(self.choices) > 1
        if self.kind == "range":
            return self.low != self.high
        return False

    def options(self) -> tuple[Any, ...]:
        """The possible values of a fixed or categorical parameter."""
        if self.kind == "fixed":
            return (self.value,)
        if self.kind == "choice":
            return self.choices
        if self.low == self.high:
            return (self.low,)
        raise TypeError("a range has no finite list of options")

    def describe(self) -> str:
        """A short human-readable form: ``0.5``, ``{a, b}``, ``[0.1, 0.9] log``."""
        if self.kind == "fixed":
            return str(self.value)
        if self.kind == "choice":
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")

    def to_yaml(self) -> Any:
        """The value as it would be written in a space file (inverse of :func:`parse_param`)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            if self.value_type in ("float", "int"):
                return {"choices": list(self.choices)}
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        return out


def fixed(value: Any, value_type: ValueType) -> Param:
    """A fixed parameter; used for defaults."""
    return Param(kind="fixed", value_type=value_type, value=value)


def choice(values: Sequence[Any], value_type: ValueType) -> Param:
    """A categorical parameter; used for defaults."""
    return Param(kind="choice", value_type=value_type, choices=tuple(values))


def span(low: float, high: float, value_type: ValueType = "float", log: bool = False) -> Param:
    """A numeric range parameter; used for defaults."""
    return Param(kind="range", value_type=value_type, low=low, high=high, log=log)


def parse_param(
    raw: Any,
    value_type: ValueType,
    *,
    names: Sequence[str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    maximum_inclusive: bool = True,
) -> Param:
    """Parse one raw YAML value into a :class:`Param`.

    Args:
        raw: the YAML value (scalar, list or mapping).
        value_type: what each value must be.
        names: for ``value_type == "name"``, the allowed names.
        minimum, maximum: bounds every number must respect (``maximum_inclusive`` says
            whether ``maximum`` itself is allowed: sparsity lives in ``[0, 1)``).

    Raises:
        ValueError: with a message naming what is allowed.
    """
    if isinstance(raw, Param):
        return raw
    if isinstance(raw, dict):
        return _parse_mapping(raw, value_type, names, minimum, maximum, maximum_inclusive)
    if isinstance(raw, list):
        if not raw:
            raise ValueError("an empty list; give one value, a list of choices or a range")
        if value_type in ("float", "int") and all(_is_number(v) for v in raw):
            if len(raw) != 2:
                raise ValueError(
                    f"a numeric range is [low, high], got {len(raw)} numbers; "
                    "for a choice among numbers write {choices: [...]}"
                )
            return _range(raw[0], raw[1], False, value_type, minimum, maximum, maximum_inclusive)
        values = tuple(_check_value(v, value_type, names, minimum, maximum, maximum_inclusive) for v in raw)
        if len(set(values)) != len(values):
            raise ValueError(f"choices repeat a value: {list(raw)}")
        return Param(kind="choice", value_type=value_type, choices=values)
    value = _check_value(raw, value_type, names, minimum, maximum, maximum_inclusive)
    return Param(kind="fixed", value_type=value_type, value=value)


def _parse_mapping(
    raw: dict,
    value_type: ValueType,
    names: Sequence[str] | None,
    minimum: float | None,
    maximum: float | None,
    maximum_inclusive: bool,
) -> Param:
    keys = set(raw)
    if keys == {"choices"}:
        if not isinstance(raw["choices"], list) or not raw["choices"]:
            raise ValueError("choices must be a non-empty list")
        values = tuple(
            _check_value(v, value_type, names, minimum, maximum, maximum_inclusive) for v in raw["choices"]
        )
        return Param(kind="choice", value_type=value_type, choices=values)
    if value_type not in ("float", "int"):
        raise ValueError(f"expected a {_type_word(value_type, names)} or a list of them, got a mapping")
    unknown = keys - {"low", "high", "log"}
    if unknown or not {"low", "high"} <= keys:
        raise ValueError(
            f"a range mapping has keys low, high and optional log; got {sorted(keys)}"
        )
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, got {log!r}")
    return _range(raw["low"], raw["high"], log, value_type, minimum, maximum, maximum_inclusive)


def _range(
    low: Any,
    high: Any,
    log: bool,
    value_type: ValueType,
    minimum: float | None,
    maximum: float | None,
    maximum_inclusive: bool,
) -> Param:
    low = _check_value(low, value_type, None, minimum, maximum, maximum_inclusive)
    high = _check_value(high, value_type, None, minimum, maximum, maximum_inclusive)
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low}")
    return Param(kind="range", value_type=value_type, low=low, high=high, log=log)


def _check_value(
    value: Any,
    value_type: ValueType,
    names: Sequence[str] | None,
    minimum: float | None,
    maximum: float | None,
    maximum_inclusive: bool,
) -> Any:
    if value_type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if value_type == "name":
        if not isinstance(value, str):
            raise ValueError(f"expected a {_type_word(value_type, names)}, got {value!r}")
        if names is not None and value not in names:
            close = difflib.get_close_matches(value, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown value {value!r}{hint}; allowed: {', '.join(names)}")
        return value
    if not _is_number(value):
        raise ValueError(f"expected a number, got {value!r}")
    if value_type == "int":
        if float(value) != int(value):
            raise ValueError(f"expected a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} is below the minimum {minimum}{_bounds(minimum, maximum, maximum_inclusive)}")
    if maximum is not None and (value > maximum or (value == maximum and not maximum_inclusive)):
        raise ValueError(f"{value} is out of range{_bounds(minimum, maximum, maximum_inclusive)}")
    return value


def _bounds(minimum: float | None, maximum: float | None, maximum_inclusive: bool) -> str:
    low = "-inf" if minimum is None else f"{minimum:g}"
    high = "inf" if maximum is None else f"{maximum:g}"
    return f"; allowed: [{low}, {high}{']' if maximum_inclusive else ')'}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_word(value_type: ValueType, names: Sequence[str] | None) -> str:
    if value_type == "name" and names:
        return "name (one of " + ", ".join(names) + ")"
    return value_type
