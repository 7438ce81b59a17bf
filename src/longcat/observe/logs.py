"""Log lines as text or as JSON objects, one per line, each naming the request it came from.

A line logged while a request is being served carries that request's id (the `x-request-id` its
client got), so an error, an upstream's complaint and the access line of one request can be
found together. Access lines (logger `longcat.access`) carry their fields in `extra={"fields":
…}`: JSON puts them in the object, text appends them as key=value.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from longcat import jsonutil
from longcat.observe.access import current


def _request_id(record: logging.LogRecord) -> str | None:
    fields = getattr(record, "fields", None)
    if fields is not None:
        return None  # an access line names its request among its fields
    acc = current.get()
    return acc.request_id if acc is not None else None


class JSONFormatter(logging.Formatter):
    """{"ts", "level", "logger", "pid"?, "msg", "request_id"?, <fields>…, "exc"?} on one line."""

    def __init__(self, process_ids: bool = False) -> None:
        super().__init__()
        self.process_ids = process_ids

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.process_ids:
            out["pid"] = record.process
        out["msg"] = record.getMessage()
        rid = _request_id(record)
        if rid is not None:
            out["request_id"] = rid
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return jsonutil.dumps(out).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value…`, for people reading a terminal."""

    def __init__(self, process_ids: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s" + ("[%(process)d]" if process_ids else "") + ": %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        rid = _request_id(record)
        extra = [] if rid is None else [f"request_id={rid}"]
        if fields:
            extra += [f"{k}={_text(v)}" for k, v in fields.items()]
        if not extra:
            return line
        head, sep, rest = line.partition("\n")  # a traceback stays below the line
        return head + " " + " ".join(extra) + sep + rest


def _text(value: Any) -> str:
    text = str(value)
    return text if text and " " not in text and "=" not in text else jsonutil.dumps(text).decode()


def _timestamp(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def wants_json(log_format: str, stream: TextIO) -> bool:
    """`auto`: JSON unless the stream is a terminal (a person is reading)."""
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return log_format == "json"


def configure(level: str, log_format: str = "auto", stream: TextIO | None = None, *, process_ids: bool = False) -> None:
    """Send every logger's lines to `stream` (stderr) in the chosen format, at `level`;
    `process_ids`: each line names its process (several workers share one stream)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter(process_ids) if wants_json(log_format, stream) else TextFormatter(process_ids))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
