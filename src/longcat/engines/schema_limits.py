"""What a JSON schema may ask of a grammar-constrained reply.

A schema is turned into a grammar before generation, and grammar size grows with the counts a
schema names: `{"maxLength": 200000000}` alone asked for a grammar of gigabytes. Counts that large
are never what structured output needs, so schemas asking for them are refused up front, before
any conversion runs.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_SCHEMA_CHARS = 64 * 1024
MAX_COUNT = 1000
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def schema_problem(schema: Any) -> str | None:
    """Why `schema` cannot be enforced, or None when it can be tried."""
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        return f"The JSON schema is larger than {MAX_SCHEMA_CHARS // 1024} KiB; simplify it."
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key in _COUNTS:
            value = node.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_COUNT:
                return f"'{key}' is {value:g}: a schema may ask for counts of at most {MAX_COUNT:,} here; simplify it."
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for low, high in _REPEAT.findall(pattern):
                if int(low) > MAX_COUNT or (high and int(high) > MAX_COUNT):
                    return f"The pattern {pattern[:60]!r} repeats more than {MAX_COUNT:,} times: a schema may ask for counts of at most {MAX_COUNT:,} here; simplify it."
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return None
