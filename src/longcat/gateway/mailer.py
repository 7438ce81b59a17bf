"""Outgoing email for verification and reset links, from the `smtp_url` setting.

`smtp://user:pass@host:587?from=noreply@example.com` uses STARTTLS when the server offers it;
`smtps://…:465` is TLS from the start. Sending runs on a worker thread; a failure is logged
(without the URL's password) and reported to the caller as False.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("longcat.mail")


class Mailer:
    def __init__(self, smtp_url: str) -> None:
        self.url = urlsplit(smtp_url) if smtp_url else None

    @property
    def enabled(self) -> bool:
        return self.url is not None and self.url.scheme in ("smtp", "smtps")

    def _sender(self) -> str:
        assert self.url is not None
        given = parse_qs(self.url.query).get("from")
        return given[0] if given else f"noreply@{self.url.hostname or 'localhost'}"

    def _send(self, to: str, subject: str, body: str) -> None:
        assert self.url is not None
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self._sender(), to, subject
        msg.set_content(body)
        host, secure = self.url.hostname or "localhost", self.url.scheme == "smtps"
        port = self.url.port or (465 if secure else 25)
        cls = smtplib.SMTP_SSL if secure else smtplib.SMTP
        with cls(host, port, timeout=15) as smtp:
            if not secure:
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=ssl.create_default_context())
            if self.url.username:
                smtp.login(unquote(self.url.username), unquote(self.url.password or ""))
            smtp.send_message(msg)

    async def send(self, to: str, subject: str, body: str) -> bool:
        if not self.enabled:
            return False
        try:
            await asyncio.to_thread(self._send, to, subject, body)
            return True
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("sending mail to %s via %s failed: %s", to, self.url.hostname if self.url else "?", type(exc).__name__)
            return False
