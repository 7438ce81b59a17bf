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


def not_found(what: str = "key") -> ActionError:
    return ActionError("not_found", _NOT_FOUND[what], 404)


def forbidden() -> ActionError:
    return ActionError("forbidden", N_("This needs an administrator account."), 403)
