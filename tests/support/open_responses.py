"""What the Open Responses specification requires of a response object and of each stream event.

Open Responses (github.com/openresponses/openresponses) is the open specification of the
/v1/responses wire format. These checks are written by hand from its version 2026-04-24
(`public/openapi/openapi.json` there; `schema/*.tsp` is its source): for every object the fields
it lists as `required`, each with its type, plus the types of the optional fields we send.
Fields it does not describe are allowed, as its own compliance suite allows them.

A checker is a function `(value, path) -> [problems]`; `response_problems` and `event_problems`
return every problem found, each naming the JSON path, so a failing test says all that is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

SPEC_VERSION = "2026-04-24"

Check = Callable[[Any, str], list[str]]


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(name: str, test: Callable[[Any], bool]) -> Check:
    return lambda value, path: [] if test(value) else [f"{path}: must be {name}, got {_show(value)}"]


STRING = _kind("a string", lambda v: isinstance(v, str))
# JSON has one number type: an integer is a number without a fraction (so 3.0 is one, as JSON
# Schema and the suite's zod checks say), and a boolean is neither.
NUMBER = _kind("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
INTEGER = _kind("an integer", lambda v: NUMBER(v, "") == [] and float(v).is_integer())
BOOLEAN = _kind("a boolean", lambda v: isinstance(v, bool))
OBJECT = _kind("an object", lambda v: isinstance(v, dict))
ANY: Check = lambda value, path: []  # noqa: E731


def enum(*values: str) -> Check:
    return _kind(f"one of {', '.join(values)}", lambda v: isinstance(v, str) and v in values)


def nullable(check: Check) -> Check:
    return lambda value, path: [] if value is None else check(value, path)


def array(item: Check) -> Check:
    def check(value: Any, path: str) -> list[str]:
        if not isinstance(value, list):
            return [f"{path}: must be an array, got {_show(value)}"]
        return [problem for i, v in enumerate(value) for problem in item(v, f"{path}[{i}]")]

    return check


def map_of(item: Check) -> Check:
    def check(value: Any, path: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{path}: must be an object, got {_show(value)}"]
        return [problem for k, v in value.items() for problem in item(v, f"{path}.{k}")]

    return check


class _Optional:
    def __init__(self, check: Check) -> None:
        self.check = check


def optional(check: Check) -> _Optional:
    """A field that may be absent (but, when present, has the type)."""
    return _Optional(check)


def obj(**fields: Check | _Optional) -> Check:
    """An object with these fields: each required unless wrapped in `optional`."""

    def check(value: Any, path: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{path}: must be an object, got {_show(value)}"]
        problems = []
        for name, field in fields.items():
            if isinstance(field, _Optional):
                if name in value:
                    problems += field.check(value[name], f"{path}.{name}")
            elif name not in value:
                problems.append(f"{path}: the required field {name!r} is missing")
            else:
                problems += field(value[name], f"{path}.{name}")
        return problems

    return check


def const(value: str) -> Check:
    return _kind(repr(value), lambda v: v == value)


def tagged(**variants: Check) -> Check:
    """A union told apart by `type` (the specification's `discriminator`)."""

    def check(value: Any, path: str) -> list[str]:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in variants:
            return [f"{path}.type: must be one of {', '.join(variants)}, got {_show(kind)}"]
        return variants[kind](value, path)

    return check


def one_of(*checks: Check) -> Check:
    def check(value: Any, path: str) -> list[str]:
        results = [c(value, path) for c in checks]
        if any(not r for r in results):
            return []
        return [f"{path}: fits none of its {len(checks)} allowed shapes: " + "; ".join(r[0] for r in results)]

    return check


# ------------------------------------------------------------------------------- content parts

STATUS = enum("in_progress", "completed", "incomplete")
URL_CITATION = obj(type=const("url_citation"), url=STRING, start_index=INTEGER, end_index=INTEGER, title=STRING)
TOP_LOGPROB = obj(token=STRING, logprob=NUMBER, bytes=array(INTEGER))
LOGPROB = obj(token=STRING, logprob=NUMBER, bytes=array(INTEGER), top_logprobs=array(TOP_LOGPROB))

INPUT_TEXT = obj(type=const("input_text"), text=STRING)
OUTPUT_TEXT = obj(
    type=const("output_text"), text=STRING, annotations=array(tagged(url_citation=URL_CITATION)), logprobs=optional(array(LOGPROB))
)
INPUT_IMAGE = obj(type=const("input_image"), image_url=nullable(STRING), detail=enum("low", "high", "auto"))
INPUT_FILE = obj(type=const("input_file"), filename=optional(STRING), file_url=optional(STRING))
PARTS = {
    "input_text": INPUT_TEXT,
    "output_text": OUTPUT_TEXT,
    "text": obj(type=const("text"), text=STRING),
    "summary_text": obj(type=const("summary_text"), text=STRING),
    "reasoning_text": obj(type=const("reasoning_text"), text=STRING),
    "refusal": obj(type=const("refusal"), refusal=STRING),
    "input_image": INPUT_IMAGE,
    "input_file": INPUT_FILE,
}
CONTENT_PART = tagged(**PARTS)

# ------------------------------------------------------------------------------------- items

MESSAGE = obj(
    type=const("message"),
    id=STRING,
    status=STATUS,
    role=enum("user", "assistant", "system", "developer"),
    content=array(tagged(**PARTS, input_video=obj(type=const("input_video"), video_url=STRING))),
    phase=optional(enum("commentary", "final_answer")),
)
FUNCTION_CALL = obj(type=const("function_call"), id=STRING, call_id=STRING, name=STRING, arguments=STRING, status=STATUS)
FUNCTION_CALL_OUTPUT = obj(
    type=const("function_call_output"),
    id=STRING,
    call_id=STRING,
    output=one_of(STRING, array(tagged(input_text=INPUT_TEXT, input_image=INPUT_IMAGE, input_file=INPUT_FILE))),
    status=STATUS,
)
REASONING_ITEM = obj(
    type=const("reasoning"),
    id=STRING,
    summary=array(CONTENT_PART),
    content=optional(array(CONTENT_PART)),
    encrypted_content=optional(STRING),
)
COMPACTION = obj(type=const("compaction"), id=STRING, encrypted_content=STRING, created_by=optional(STRING))
ITEM = tagged(
    message=MESSAGE,
    function_call=FUNCTION_CALL,
    function_call_output=FUNCTION_CALL_OUTPUT,
    reasoning=REASONING_ITEM,
    compaction=COMPACTION,
)

# ----------------------------------------------------------------------------- the response

TOOL = tagged(
    function=obj(
        type=const("function"), name=STRING, description=nullable(STRING), parameters=nullable(OBJECT), strict=nullable(BOOLEAN)
    )
)
TOOL_CHOICE_VALUE = enum("none", "auto", "required")
FUNCTION_TOOL_CHOICE = obj(type=const("function"), name=optional(STRING))
TOOL_CHOICE = one_of(
    FUNCTION_TOOL_CHOICE,
    TOOL_CHOICE_VALUE,
    obj(type=const("allowed_tools"), tools=array(FUNCTION_TOOL_CHOICE), mode=TOOL_CHOICE_VALUE),
)
TEXT_FIELD = obj(
    format=tagged(
        text=obj(type=const("text")),
        json_object=obj(type=const("json_object")),
        # The 2026-04-24 openapi.json types `schema` as null, a slip of its generator: the
        # component schema and the TypeSpec source both say an object (or null).
        json_schema=obj(
            type=const("json_schema"), name=STRING, description=nullable(STRING), schema=nullable(OBJECT), strict=BOOLEAN
        ),
    ),
    verbosity=optional(enum("low", "medium", "high")),
)
REASONING = obj(
    effort=nullable(enum("none", "low", "medium", "high", "xhigh")),
    summary=nullable(enum("concise", "detailed", "auto")),
)
USAGE = obj(
    input_tokens=INTEGER,
    output_tokens=INTEGER,
    total_tokens=INTEGER,
    input_tokens_details=obj(cached_tokens=INTEGER),
    output_tokens_details=obj(reasoning_tokens=INTEGER),
)
RESPONSE = obj(
    id=STRING,
    object=const("response"),
    created_at=INTEGER,
    completed_at=nullable(INTEGER),
    status=STRING,
    incomplete_details=nullable(obj(reason=STRING)),
    model=STRING,
    previous_response_id=nullable(STRING),
    instructions=nullable(STRING),
    output=array(ITEM),
    error=nullable(obj(code=STRING, message=STRING)),
    tools=array(TOOL),
    tool_choice=TOOL_CHOICE,
    truncation=enum("auto", "disabled"),
    parallel_tool_calls=BOOLEAN,
    text=TEXT_FIELD,
    top_p=NUMBER,
    presence_penalty=NUMBER,
    frequency_penalty=NUMBER,
    top_logprobs=INTEGER,
    temperature=NUMBER,
    reasoning=nullable(REASONING),
    usage=nullable(USAGE),
    max_output_tokens=nullable(INTEGER),
    max_tool_calls=nullable(INTEGER),
    store=BOOLEAN,
    background=BOOLEAN,
    service_tier=STRING,
    metadata=ANY,
    safety_identifier=nullable(STRING),
    prompt_cache_key=nullable(STRING),
)

# --------------------------------------------------------------------------------- events


def _event(kind: str, **fields: Check | _Optional) -> Check:
    return obj(type=const(kind), sequence_number=INTEGER, **fields)


def _in_item(**fields: Check | _Optional) -> dict[str, Check | _Optional]:
    return {"item_id": STRING, "output_index": INTEGER, **fields}


EVENTS: dict[str, Check] = {
    **{
        kind: _event(kind, response=RESPONSE)
        for kind in (
            "response.created",
            "response.queued",
            "response.in_progress",
            "response.completed",
            "response.failed",
            "response.incomplete",
        )
    },
    **{kind: _event(kind, output_index=INTEGER, item=nullable(ITEM)) for kind in ("response.output_item.added", "response.output_item.done")},
    **{
        kind: _event(kind, **_in_item(summary_index=INTEGER, part=CONTENT_PART))
        for kind in ("response.reasoning_summary_part.added", "response.reasoning_summary_part.done")
    },
    **{
        kind: _event(kind, **_in_item(content_index=INTEGER, part=CONTENT_PART))
        for kind in ("response.content_part.added", "response.content_part.done")
    },
    "response.output_text.delta": _event(
        "response.output_text.delta",
        **_in_item(content_index=INTEGER, delta=STRING, logprobs=optional(array(LOGPROB)), obfuscation=optional(STRING)),
    ),
    "response.output_text.done": _event(
        "response.output_text.done", **_in_item(content_index=INTEGER, text=STRING, logprobs=optional(array(LOGPROB)))
    ),
    "response.refusal.delta": _event("response.refusal.delta", **_in_item(content_index=INTEGER, delta=STRING)),
    "response.refusal.done": _event("response.refusal.done", **_in_item(content_index=INTEGER, refusal=STRING)),
    "response.reasoning.delta": _event(
        "response.reasoning.delta", **_in_item(content_index=INTEGER, delta=STRING, obfuscation=optional(STRING))
    ),
    "response.reasoning.done": _event("response.reasoning.done", **_in_item(content_index=INTEGER, text=STRING)),
    "response.reasoning_summary_text.delta": _event(
        "response.reasoning_summary_text.delta", **_in_item(summary_index=INTEGER, delta=STRING, obfuscation=optional(STRING))
    ),
    "response.reasoning_summary_text.done": _event(
        "response.reasoning_summary_text.done", **_in_item(summary_index=INTEGER, text=STRING)
    ),
    "response.output_text.annotation.added": _event(
        "response.output_text.annotation.added",
        **_in_item(content_index=INTEGER, annotation_index=INTEGER, annotation=nullable(tagged(url_citation=URL_CITATION))),
    ),
    "response.function_call_arguments.delta": _event(
        "response.function_call_arguments.delta", **_in_item(delta=STRING, obfuscation=optional(STRING))
    ),
    "response.function_call_arguments.done": _event("response.function_call_arguments.done", **_in_item(arguments=STRING)),
    "error": _event(
        "error",
        error=obj(type=STRING, code=nullable(STRING), message=STRING, param=nullable(STRING), headers=optional(map_of(STRING))),
    ),
}


def response_problems(body: Any) -> list[str]:
    return RESPONSE(body, "response")


def event_problems(event: Any) -> list[str]:
    """Problems of one stream event; a type the specification does not define is one."""
    kind = event.get("type") if isinstance(event, dict) else None
    if kind not in EVENTS:
        return [f"event: the type {_show(kind)} is not a stream event of Open Responses {SPEC_VERSION}"]
    return EVENTS[kind](event, kind)


def check_response(body: Any) -> None:
    problems = response_problems(body)
    assert not problems, f"not a valid Open Responses {SPEC_VERSION} response object:\n  " + "\n  ".join(problems)


def check_event(event: Any) -> None:
    problems = event_problems(event)
    assert not problems, f"not a valid Open Responses {SPEC_VERSION} stream event:\n  " + "\n  ".join(problems)
