"""The one schema helper: a mapping of `Field`s (sections nest as dicts) that checks a YAML mapping key by key,
for the training config (trainers/config.py) and the experiment file (fmtspec/experiment_file.py).

Each problem is one FmtspecError line naming the dotted key and the value: an unknown key (with the closest
valid one), a value of the wrong type, outside its choices or its range, or failing the field's own check.
Values are coerced in place where YAML reads them loosely (`1e-3` as a string, `2.0` for an int).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

from fmtspec.core.errors import FmtspecError, did_you_mean


@dataclass(frozen=True)
class Field:
    type: type | tuple  # int, float, str, bool, list, dict, or a tuple of them
    default: Any = None
    choices: tuple | None = None
    nullable: bool = True
    help: str = ""
    min: float | None = None  # numbers: the allowed range (min/max inclusive, gt/lt exclusive)
    max: float | None = None
    gt: float | None = None
    lt: float | None = None
    valid: Callable[[Any], bool] | None = None  # a check beyond type, choices and range
    rule: str | None = None  # what is allowed, in words, when not "<type>" or "<range>" (for `valid`)

    def range_text(self) -> str | None:
        """'at least 1', 'greater than 0', 'between 0 and 1', 'at least 0 and below 1', or None (no range)."""
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        low = f"at least {self.min}" if self.min is not None else f"greater than {self.gt}" if self.gt is not None \
            else None
        high = f"at most {self.max}" if self.max is not None else f"below {self.lt}" if self.lt is not None else None
        return " and ".join(part for part in (low, high) if part) or None

    def in_range(self, value) -> bool:
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.gt is None or value > self.gt) and (self.lt is None or value < self.lt))


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
              dict: "a mapping"}


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def dotted_keys(schema: dict, where: str = "") -> list[str]:
    out = []
    for key, spec in schema.items():
        out += dotted_keys(spec, f"{where}{key}.") if isinstance(spec, dict) else [f"{where}{key}"]
    return out


def defaults(schema: dict) -> dict:
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def merge(base: dict, update: dict) -> dict:
    """Nested update: sections merge key by key, other values replace (a task mixture is a value)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "tasks":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check(section: dict, schema: dict, where: str = "", *, noun: str = "config key",
          hint: Callable[[str, dict, str], str] | None = None) -> None:
    """Check (and coerce in place) every key of `section` against `schema`. `where` is the dotted prefix of the
    section ("" or "lm_eval."), `noun` how messages name a key, `hint(key, schema, where)` the suggestion for
    an unknown key (default: the closest key of the same section)."""
    for key, value in section.items():
        dotted = f"{where}{key}"
        if key not in schema:
            suggestion = hint(key, schema, where) if hint else did_you_mean(key, schema)
            raise FmtspecError(f"unknown {noun} '{dotted}'{suggestion}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise FmtspecError(f"{noun} '{dotted}' must be a mapping of {', '.join(spec)}")
            check(value, spec, f"{dotted}.", noun=noun, hint=hint)
            continue
        section[key] = coerce(dotted, value, spec, noun)


def coerce(dotted: str, value, spec: Field, noun: str = "config key"):
    """`value` as `spec` takes it, or one FmtspecError line."""
    if value is None:
        if not spec.nullable:
            raise FmtspecError(f"{noun} '{dotted}' must be set")
        return None
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    if float in types and (isinstance(value, str) or is_int(value) and int not in types):
        try:  # YAML reads 1e-3 as a string
            value = float(value)
        except ValueError:
            pass
    if int in types and isinstance(value, float) and value.is_integer() and float not in types:
        value = int(value)
    ok = any(is_int(value) if t is int else isinstance(value, t) for t in types)
    if not ok:
        names = spec.rule or " or ".join(TYPE_NAMES[t] for t in types)
        raise FmtspecError(f"{noun} '{dotted}' must be {names}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise FmtspecError(f"{noun} '{dotted}' is {value!r}; choose one of "
                           f"{', '.join(map(str, spec.choices))}{did_you_mean(value, spec.choices)}")
    allowed = spec.range_text()
    if allowed is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or not spec.in_range(value):
            raise FmtspecError(f"{noun} '{dotted}' must be {spec.rule or allowed}"
                               f"{' (or null)' if spec.nullable and not spec.rule else ''}, got {value!r}")
    if spec.valid is not None and not spec.valid(value):
        raise FmtspecError(f"{noun} '{dotted}' must be {spec.rule}, got {value!r}")
    return value
