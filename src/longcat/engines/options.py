"""Checking a catalog entry's engine options: each engine declares the options it knows, and a
wrong name, type or range stops start-up with one line naming the model, the option, the value
and what is allowed (`longcat config check` runs the same checks without starting anything)."""

from __future__ import annotations

from typing import Any

from longcat.config import MAX_INT, ConfigError, ModelConfig, shown, suggest


def reject_unknown(model: ModelConfig, engine: str, known: set[str] | frozenset[str]) -> None:
    """Options the engine does not know are typos or leftovers: refuse them, suggesting the closest."""
    unknown = sorted(set(model.options) - set(known))
    if not unknown:
        return
    hint = suggest(unknown[0], known) if len(unknown) == 1 else ""
    listing = "" if hint else f" (known: {', '.join(sorted(known))})"
    raise ConfigError(f"model {model.id!r}: unknown option(s) {', '.join(unknown)} for engine {engine!r}{hint}{listing}")


def _fail(model: ModelConfig, name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"model {model.id!r}: {name} = {shown(name, value)}: must be {allowed}")


def number(
    model: ModelConfig,
    name: str,
    default: float | int | None,
    *,
    integer: bool = False,
    minimum: float = 0,
    maximum: float | None = None,
    positive: bool = False,
) -> Any:
    """The option as an int (`integer`) or a float within [minimum, maximum] (above 0 if `positive`)."""
    if name not in model.options:
        return default
    value = model.options[name]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and value >= minimum and (maximum is None or value <= maximum)
    ok = ok and not (positive and value <= 0) and abs(value) <= MAX_INT
    if not ok:
        what = "an integer" if integer else "a number"
        if positive:
            allowed = f"{what} more than 0" + (f" and at most {maximum:g}" if maximum is not None else "")
        elif maximum is not None:
            allowed = f"{what} from {minimum:g} to {maximum:g}"
        else:
            allowed = f"{what}, {minimum:g} or more"
        raise _fail(model, name, value, allowed)
    return value if integer else float(value)


def flag(model: ModelConfig, name: str, default: bool) -> bool:
    value = model.options.get(name, default)
    if not isinstance(value, bool):
        raise _fail(model, name, value, "true or false")
    return value


def text(model: ModelConfig, name: str, default: str | None) -> str | None:
    value = model.options.get(name, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(model, name, value, "a non-empty string")
    return value
