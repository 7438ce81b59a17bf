"""Everything the console's routes use, built once per app from the stores and the gateway."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jinja2.ext import _make_new_gettext, _make_new_ngettext  # noqa: PLC2701 - the newstyle wrappers

from longcat.config import Settings
from longcat.console import filters, i18n
from longcat.gateway.admin import AdminDesk
from longcat.gateway.keys import KeyDesk
from longcat.gateway.mailer import Mailer
from longcat.gateway.sessions import AccountDesk
from longcat.store.audit import AuditStore
from longcat.store.feedback_log import FeedbackLog
from longcat.store.invites import InviteStore
from longcat.store.sessions import SessionStore
from longcat.store.usage_log import UsageLog

HERE = Path(__file__).parent


def _static_version() -> str:
    """A hash of the static files: part of their URLs, so browsers may cache them for good."""
    h = hashlib.sha256()
    for path in sorted((HERE / "static").rglob("*")):
        if path.is_file() and "axe-core" not in str(path):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:10]


@dataclass
class Console:
    settings: Settings
    gateway: object
    feedback: object  # gateway.feedback.FeedbackDesk
    secret: bytes
    accounts: object = None
    sessions: SessionStore = None  # type: ignore[assignment]
    invites: InviteStore = None  # type: ignore[assignment]
    audit: AuditStore = None  # type: ignore[assignment]
    usage_log: UsageLog = None  # type: ignore[assignment]
    feedback_log: FeedbackLog = None  # type: ignore[assignment]
    keys: KeyDesk = None  # type: ignore[assignment]
    desk: AccountDesk = None  # type: ignore[assignment]
    admin: AdminDesk = None  # type: ignore[assignment]
    envs: dict[str, Environment] = field(default_factory=dict)
    translations: dict = field(default_factory=dict)
    static_version: str = ""

    @classmethod
    def build(cls, settings: Settings, gateway, feedback, secret: bytes) -> Console:
        engine = gateway.accounts.engine
        c = cls(settings, gateway, feedback, secret)
        c.accounts = gateway.accounts
        c.sessions = SessionStore(engine)
        c.invites = InviteStore(engine)
        c.audit = AuditStore(engine)
        c.usage_log = UsageLog(engine)
        c.feedback_log = FeedbackLog(engine)
        c.keys = KeyDesk(settings, gateway.accounts)
        c.desk = AccountDesk(settings, gateway.accounts, c.sessions, c.invites, gateway.counters, gateway.clock, Mailer(settings.smtp_url))
        c.admin = AdminDesk(settings, gateway.accounts, c.sessions, c.invites, c.audit, gateway.usage, c.keys, c.desk.hasher, gateway.clock)
        c.translations = i18n.load_all()
        c.static_version = _static_version()
        for lang, tr in c.translations.items():
            env = Environment(
                loader=FileSystemLoader(HERE / "templates"),
                autoescape=select_autoescape(["html"]),
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.globals.update(gettext=_make_new_gettext(tr.gettext), ngettext=_make_new_ngettext(tr.ngettext))
            env.globals["_"] = env.globals["gettext"]
            env.globals["lang"] = lang
            env.filters.update(filters.for_language(lang))
            c.envs[lang] = env
        return c
