"""Declared parameters of a plugin, and their validation.

A plugin declares its parameters as a mapping ``name -> Param``; a recipe's
``params:`` block is validated against it (types, ranges, choices, unknown
keys) before anything heavy is imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import did_you_mean

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


@dataclass(frozen=True)
class Param:
    """One parameter: default, type, optional bounds/choices, unit and help.

    ``type`` is one of ``bool, int, float, str, list, dict``. ``None`` as a
    default means optional (``nullable``). ``min``/``max`` are inclusive.
    ``items`` constrains the element type of a list. ``inference_only``: the
    component reads it only when it predicts, never while it trains (a
    segmenter's post-processing, for example): the loop then re-segments with a
    changed value and keeps the trained model.
    """

    default: Any
    type: type = float
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    unit: str = ""
    help: str = ""
    items: type | None = None
    nullable: bool = field(default=False)
    inference_only: bool = False

    def __post_init__(self):
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"Param type must be one of {sorted(t.__name__ for t in _TYPE_NAMES)}")
        if self.default is None:
            object.__setattr__(self, "nullable", True)

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Return ``(normalised value, None)`` or ``(value, reason it is wrong)``."""
        if value is None:
            return (None, None) if self.nullable else (value, "must not be empty (null)")
        value, problem = _check_type(value, self.type)
        if problem:
            return value, problem
        if self.type is list and self.items is not None:
            checked = []
            for index, item in enumerate(value):
                item, problem = _check_type(item, self.items)
                if problem:
                    return value, f"item {index} {problem}"
                checked.append(item)
            value = checked
        if self.choices is not None and value not in self.choices:
            return value, f"must be one of {list(self.choices)}, got {value!r}.{did_you_mean(value, map(str, self.choices))}"
        if self.min is not None and value < self.min:
            return value, f"must be >= {self.min}{' ' + self.unit if self.unit else ''}, got {value!r}"
        if self.max is not None and value > self.max:
            return value, f"must be <= {self.max}{' ' + self.unit if self.unit else ''}, got {value!r}"
        return value, None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (for ``emcopilot plugins --json``)."""
        out = {"type": self.type.__name__, "default": self.default}
        for key in ("min", "max", "unit", "help"):
            if getattr(self, key) not in (None, ""):
                out[key] = getattr(self, key)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.inference_only:
            out["inference_only"] = True
        return out


def _check_type(value: Any, expected: type) -> tuple[Any, str | None]:
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"must be {_TYPE_NAMES[float]}, got {type(value).__name__} {value!r}"
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            return value, f"must be a finite number, got {value!r}"
        return value, None
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"must be {_TYPE_NAMES[int]}, got {type(value).__name__} {value!r}"
        return value, None
    if not isinstance(value, expected):
        return value, f"must be {_TYPE_NAMES[expected]}, got {type(value).__name__} {value!r}"
    return value, None


class ParamsProblem(Exception):
    """Raised by :func:`validate_params`; ``key`` is the offending parameter."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


def validate_params(schema: Mapping[str, Param], given: Mapping[str, Any] | None,
                    owner: str) -> dict[str, Any]:
    """Validate ``given`` against ``schema``; return it with defaults filled in.

    Raises :class:`ParamsProblem` for the first unknown key, wrong type or
    out-of-range value; the message names ``owner`` (the plugin) and lists
    the parameters that exist.
    """
    given = dict(given or {})
    for key in given:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise ParamsProblem(key, f"unknown parameter for {owner}.{did_you_mean(key, schema)} "
                                     f"Parameters of {owner}: {known}")
    resolved = {}
    for key, param in schema.items():
        value, problem = param.check(given.get(key, param.default))
        if problem:
            raise ParamsProblem(key, f"{owner} parameter {key!r} {problem}")
        resolved[key] = value
    return resolved
