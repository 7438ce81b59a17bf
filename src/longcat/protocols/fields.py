"""Reading request bodies with clear errors: every decoder checks fields through these helpers,
so a wrong type always gets the same kind of message naming the field."""

from __future__ import annotations

import json
import re
from typing import Any

from longcat import jsonutil
from longcat.canonical import ApiError, invalid, shown

_MISSING = object()


# Deeper bodies are refused (the default of the `max_json_depth` setting): no real request nests
# this far, and deep structures make recursive code (copying, encoding) fail far from where the
# input came in. The setting can go no higher than DEPTH_CEILING, which leaves that code (two
# frames a level for `copy.deepcopy`) well inside Python's recursion limit of 1,000.
MAX_DEPTH = 128
DEPTH_CEILING = 256
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_object(raw: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The body as a JSON object, no deeper than `max_depth`, its lone surrogates replaced."""
    max_depth = min(max_depth, DEPTH_CEILING)
    if not raw.strip():
        raise invalid("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body, lenient = jsonutil.loads_noting_fallback(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError:  # an integer with more digits than Python converts (4,300)
        raise invalid("The request body holds a number with too many digits.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    # Each level takes two bytes at least, so a short body cannot be too deep.
    if len(raw) > 2 * max_depth and not _within_depth(body, max_depth):
        raise _too_deep(max_depth)
    # orjson refuses lone surrogates, so only a body the standard library parsed can hold one.
    if lenient and _SURROGATE_ESCAPE.search(raw) is not None:
        _replace_surrogates(body)
    return body


def _too_deep(max_depth: int) -> ApiError:
    return invalid(f"The request body nests deeper than {max_depth} levels.", code="invalid_json")


def _within_depth(body: dict[str, Any], max_depth: int) -> bool:
    """Whether `body` nests at most `max_depth` levels. One level at a time, looking only at
    objects and arrays: this runs on every request body (about 35 us for a 40 KB agent request,
    as much as parsing it; bench/body_checks.py)."""
    level: list[Any] = [body]
    depth = 1
    while level:
        if depth > max_depth:
            return False
        below: list[Any] = []
        for node in level:
            below += [v for v in (node.values() if type(node) is dict else node) if type(v) is dict or type(v) is list]
        level = below
        depth += 1
    return True


def _replace_surrogates(body: dict[str, Any]) -> None:
    """Lone UTF-16 surrogates are valid JSON escapes but not text (they cannot be encoded,
    tokenized or stored): each becomes U+FFFD, as a browser would. Only for bodies holding such an
    escape, so neither the walk nor the scan for one costs the others anything."""
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if _LONE_SURROGATE.search(k)]:
                node[_LONE_SURROGATE.sub("\ufffd", key)] = node.pop(key)
            items = node.items()
        else:
            items = enumerate(node)
        for key, value in items:
            if isinstance(value, (dict, list)):
                stack.append(value)
            elif isinstance(value, str) and _LONE_SURROGATE.search(value):
                node[key] = _LONE_SURROGATE.sub("\ufffd", value)


def count_blocks(items: list[Any], limit: int) -> int:
    """The content blocks of `items` (messages, or input items) and of the blocks inside them
    (a tool result's own), counted only until they pass `limit`: checked before anything is
    decoded, so a body of a million empty blocks is refused at once."""
    total = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        for key in ("content", "output"):
            blocks = item.get(key)
            if not isinstance(blocks, list):
                continue
            total += len(blocks)
            if total > limit:
                return total
            for block in blocks:
                inner = block.get("content") if isinstance(block, dict) else None
                if isinstance(inner, list):
                    total += len(inner)
                    if total > limit:
                        return total
    return total


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
        raise invalid(f"'{name}' must be at least {minimum}, got {shown(value, 40)}.", param=name)
    if maximum is not None and value > maximum:
        raise invalid(f"'{name}' must be at most {maximum}, got {shown(value, 40)}.", param=name)
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
