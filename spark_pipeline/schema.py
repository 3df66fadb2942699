"""How every part of the configuration is checked: pydantic v2 models, one per section
(``corpus``, ``training``, ``evaluation``, ``release``, the sweep, the pairs manifest), each
defined once beside the code that uses it and built on :class:`Strict`.

Strict means: **unknown keys are errors** (``extra="forbid"``), types are not guessed (YAML
reads ``1e-4`` without a dot as text, and text is not a number here; an integer is a good
float), NaN and infinity are refused, and ranges and enums are part of each field's type.
:func:`check` turns pydantic's errors into one message that names the file(s), the key path
of every problem and, for a misspelt key, the nearest valid one::

    training settings in configs/hero.yaml over my.yaml:
      - training.optimizer.learnig_rate: unknown key (did you mean learning_rate?)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration value is unknown, missing, of the wrong type or out of range; the
    message names the file, the key path and what was expected."""


#: The kinds of number the sections use. A float setting takes ``int | float`` so that an
#: integer in YAML stays an integer (settings are fingerprinted from their JSON).
Count = Annotated[int, Field(ge=1)]
Size = Annotated[int, Field(ge=0)]
Share = Annotated[int | float, Field(ge=0, le=1)]
Positive = Annotated[int | float, Field(gt=0)]
NonNegative = Annotated[int | float, Field(ge=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the mapping at ``loc`` (a pydantic error location) in ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = next((a for a in _members(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _members(annotation) -> list:
    """The types inside an annotation (``X | None``, ``tuple[X, ...]``, ``list[X]``)."""
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [m for a in args for m in _members(a)]


def _hint(value) -> str:
    if isinstance(value, str):
        bare = value.strip().lower().replace("e", "", 1).replace("-", "", 1).replace("+", "", 1).replace(".", "", 1)
        if bare.isdigit():
            return " (YAML read it as text: write it with a dot and a signed exponent, e.g. 1.0e-4)"
    return ""


def problems(exc: ValidationError, model: type[BaseModel], key_of: Callable[[tuple], str]) -> list[str]:
    """One line per key: its path, the value, what was expected, the nearest valid key."""
    by_key: dict[str, list[str]] = {}
    values: dict[str, object] = {}
    errors = exc.errors(include_url=False)
    failed_items = {tuple(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)}
    for error in errors:
        if error["type"] == "too_short" and tuple(error["loc"]) in failed_items:
            continue  # "at least 1 item after validation": its items' own errors say why
        # a union's branches add their schema names to the location: keep the real keys only
        loc = tuple(p for p in error["loc"] if isinstance(p, int) or p.isidentifier())
        loc = tuple(p for p in loc if p not in _BRANCHES)
        key = key_of(loc)
        if error["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
            by_key.setdefault(key, []).append("unknown key" + (f" (did you mean {near[0]}?)" if near else
                                                                (f" (valid: {', '.join(valid)})" if valid else "")))
            values.setdefault(key, _UNSET)
        elif error["type"] == "missing":
            by_key.setdefault(key, []).append("missing")
            values.setdefault(key, _UNSET)
        else:
            by_key.setdefault(key, []).append(error["msg"].replace("Input should be", "expected")
                                              .replace("Value error, ", ""))
            values.setdefault(key, error.get("input"))
    out = []
    for key, messages in by_key.items():
        value = values[key]
        if "expected a valid number" in messages:  # an int | float field: say it once
            messages = [m for m in messages if m != "expected a valid integer"]
        said = "; or ".join(dict.fromkeys(messages))
        if value is _UNSET:
            out.append(f"{key}: {said}" if said != "missing" else f"{key} is missing")
        else:
            out.append(f"{key} = {value!r} ({type(value).__name__}): {said}{_hint(value)}")
    return out


_UNSET = object()
_BRANCHES = {"int", "str", "float", "bool", "dict", "list", "tuple", "none"}


def dotted(prefix: str = "") -> Callable[[tuple], str]:
    """``("optimizer", "learning_rate")`` as ``training.optimizer.learning_rate`` (``prefix="training"``)."""
    def key(loc: tuple) -> str:
        parts = [prefix] if prefix else []
        for part in loc:
            if isinstance(part, int):
                parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
            else:
                parts.append(str(part))
        return ".".join(parts) or "(top level)"
    return key


def check(model: type[BaseModel], values: Any, what: str, where: str, key_of: Callable[[tuple], str] | None = None,
          error: type[Exception] = ConfigError):
    """``model`` validated from ``values``, or ``error`` listing every problem: ``"{what} in
    {where}:"`` and a line per key."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = problems(exc, model, key_of or dotted())
        raise error(f"{what} in {where}:\n  - " + "\n  - ".join(lines)) from None
