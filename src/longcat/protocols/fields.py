"""Reading request bodies with clear errors: every decoder checks fields through these helpers,
so a wrong type always gets the same kind of message naming the field."""

from __future__ import annotations

import json
from typing import Any

from longcat.canonical import ApiError, invalid

_MISSING = object()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise invalid("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    return body


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def wrong_type(param: str, expected: str, value: Any) -> ApiError:
    return invalid(f"'{param}' must be {expected}, not {_type_name(value)}.", param=param)


def get_str(body: dict[str, Any], key: str, *, param: str | None = None, required: bool = False) -> str | None:
    value = body.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise invalid(f"'{param or key}' is required.", param=param or key)
        return None
    if not isinstance(value, str):
        raise wrong_type(param or key, "a string", value)
    return value


def get_bool(body: dict[str, Any], key: str, *, param: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise wrong_type(param or key, "a boolean", value)
    return value


def get_int(
    body: dict[str, Any], key: str, *, param: str | None = None, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    name = param or key
    # JSON has one number type; accept 100.0 but not 100.5, and never booleans.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise wrong_type(name, "an integer", value)
    value = int(value)
    if minimum is not None and value < minimum:
        raise invalid(f"'{name}' must be at least {minimum}, got {value}.", param=name)
    if maximum is not None and value > maximum:
        raise invalid(f"'{name}' must be at most {maximum}, got {value}.", param=name)
    return value


def get_number(
    body: dict[str, Any], key: str, *, param: str | None = None, minimum: float | None = None, maximum: float | None = None
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    name = param or key
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong_type(name, "a number", value)
    if value != value or value in (float("inf"), float("-inf")):
        raise invalid(f"'{name}' must be a finite number.", param=name)
    if minimum is not None and value < minimum:
        raise invalid(f"'{name}' must be between {minimum:g} and {maximum:g}, got {value:g}.", param=name)
    if maximum is not None and value > maximum:
        raise invalid(f"'{name}' must be between {minimum:g} and {maximum:g}, got {value:g}.", param=name)
    return float(value)


def get_object(body: dict[str, Any], key: str, *, param: str | None = None) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type(param or key, "an object", value)
    return value


def get_list(body: dict[str, Any], key: str, *, param: str | None = None) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise wrong_type(param or key, "an array", value)
    return value


def get_stop(body: dict[str, Any], key: str) -> list[str]:
    """`stop` / `stop_sequences`: a string or an array of strings."""
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > 16:
            raise invalid(f"'{key}' may hold at most 16 sequences.", param=key)
        return [s for s in value if s]
    raise wrong_type(key, "a string or an array of strings", value)


def json_schema_object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {"type": "object", "properties": {}}
    if not isinstance(value, dict):
        raise wrong_type(param, "a JSON schema object", value)
    return value
