"""Errors of console actions, shared by the pages and the JSON endpoints.

The message is an English gettext message id with `%(name)s` placeholders: the JSON endpoints
send it filled in as is, the pages translate it first. `N_` marks such ids for extraction.
"""

from __future__ import annotations

from typing import Any


def N_(message: str) -> str:
    """Marks a message id for translation without translating it (Babel extracts `N_`)."""
    return message


class ActionError(Exception):
    """A refused console action: `code` for programs, `message % params` for people."""

    def __init__(self, code: str, message: str, status: int = 400, *, field: str | None = None, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.params = params
        self.headers: dict[str, str] = {}

    def text(self, gettext=None) -> str:
        template = gettext(self.message) if gettext else self.message
        return template % self.params if self.params else template


_NOT_FOUND = {
    "key": N_("There is no such key in this account."),
    "account": N_("There is no such account."),
    "invite": N_("There is no such invite code."),
}


# The largest id a database column holds (BIGINT; SQLite's INTEGER).
MAX_ROW_ID = 2**63 - 1


def row_id(value: Any, minimum: int = 1) -> int | None:
    """A database id from a path, a query or a form, or None for anything else: a number too large
    for the column is not an id either (SQLite raises OverflowError for it and PostgreSQL a
    DataError, a 500 both). Only ASCII digits: `str.isdigit` also takes '²', which `int` refuses."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if minimum <= number <= MAX_ROW_ID else None


def not_found(what: str = "key") -> ActionError:
    return ActionError("not_found", _NOT_FOUND[what], 404)


def forbidden() -> ActionError:
    return ActionError("forbidden", N_("This needs an administrator account."), 403)
