"""With smtp_url set: registration mails a verification link, and a forgotten password a reset
link; each works once, and a reset signs every session out."""

from __future__ import annotations

import re
import time

from tests.support.console import Browser, signed_in, start_console_server, unique_email
from tests.support.smtp_sink import SmtpSink


def wait_mail(sink: SmtpSink, count: int) -> str:
    deadline = time.monotonic() + 10
    while len(sink.messages) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sink.messages) >= count
    return sink.messages[count - 1].get_payload(decode=True).decode()


def test_verification_and_reset_links(tmp_path):
    sink = SmtpSink()
    server = start_console_server(tmp_path, f'smtp_url = "smtp://127.0.0.1:{sink.port}?from=noreply@longcat.test"')
    try:
        email = unique_email()
        b = signed_in(server, email)
        assert "not confirmed yet" in b.get("/account").text
        assert "Confirm your email address first" in b.get("/keys").text
        body = wait_mail(sink, 1)
        assert sink.messages[0]["To"] == email and sink.messages[0]["From"] == "noreply@longcat.test"
        link = re.search(r"(/verify-email\?token=\S+)", body).group(1)
        refused = b.api("POST", "/api/v1/keys", {"name": "too early"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "email_unconfirmed"
        assert "Confirm your email address first" in b.post_form("/keys", {"name": "too early"}, token_from="/keys").text
        assert "confirmed" in b.get(link).text
        assert b.api("POST", "/api/v1/keys", {"name": "after confirming"}).status_code == 201
        assert "not confirmed yet" not in b.get("/account").text
        assert "does not work" in b.get(link).text  # a link works once

        # Reset: the same answer whether or not the account exists; the link sets a new password.
        anon = Browser(server.base_url)
        for who in ("nobody-here@example.com", email):
            r = anon.post_form("/reset-password", {"email": who}, token_from="/reset-password")
            assert r.status_code == 200 and "a reset link is on its way" in r.text
        body = wait_mail(sink, 2)
        assert len(sink.messages) == 2 and sink.messages[1]["To"] == email
        token = re.search(r"/reset-password\?token=(\S+)", body).group(1)
        page = anon.get(f"/reset-password?token={token}")
        assert 'name="token"' in page.text
        r = anon.post_form("/reset-password", {"token": token, "new_password": "reset by email link"}, token_from="/login")
        assert r.status_code == 200 and "Your password is changed" in r.text
        assert b.get("/keys").status_code == 303  # signed out everywhere
        assert Browser(server.base_url).login(email, "reset by email link").status_code == 303
        again = anon.post_form("/reset-password", {"token": token, "new_password": "another one please"}, token_from="/login")
        assert again.status_code == 400 and "invalid, used or expired" in again.text
        assert token not in server.log() and "reset by email link" not in server.log()
    finally:
        server.stop()
        sink.close()
