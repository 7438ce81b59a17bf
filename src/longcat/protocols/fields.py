"""Reading request bodies with clear errors: every decoder checks fields through these helpers,
so a wrong type always gets the same kind of message naming the field."""

from __future__ import annotations

import json
import re
from typing import Any

from longcat import jsonutil
from longcat.canonical import ApiError, invalid

_MISSING = object()


# Deeper bodies are refused: no real request nests this far, and deep structures make recursive
# code (copying, encoding) fail far from where the input came in.
MAX_DEPTH = 128
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise invalid("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = jsonutil.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise invalid(f"The request body nests deeper than {MAX_DEPTH} levels.", code="invalid_json") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python will parse
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    return _sound(body, fix_surrogates=_SURROGATE_ESCAPE.search(raw) is not None)


def _sound(body: dict[str, Any], *, fix_surrogates: bool) -> dict[str, Any]:
    """Check the nesting depth, and replace lone UTF-16 surrogates (valid JSON escapes, but not
    text: they cannot be encoded, tokenized or stored) with U+FFFD, as a browser would."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(f"The request body nests deeper than {MAX_DEPTH} levels.", code="invalid_json")
        if isinstance(node, dict):
            if fix_surrogates:
                for key in [k for k in node if _LONE_SURROGATE.search(k)]:
                    node[_LONE_SURROGATE.sub("\ufffd", key)] = node.pop(key)
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for key, value in items:
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif fix_surrogates and isinstance(value, str) and _LONE_SURROGATE.search(value):
                node[key] = _LONE_SURROGATE.sub("\ufffd", value)
    return body


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        raise invalid(f"'{name}' must be at least {minimum}, got {_short(value)}.", param=name)
    if maximum is not None and value > maximum:
        raise invalid(f"'{name}' must be at most {maximum}, got {_short(value)}.", param=name)
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
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        raise invalid(f"'{name}' is out of range.", param=name) from None
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
