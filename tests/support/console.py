"""Helpers for the console tests: a signed-in HTTP client that plays a browser (cookies, CSRF
tokens from the forms), and reading the admin's first-start password from the server log."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import httpx

from tests.support.server import MOCK_CATALOG, Server, free_port, write_config

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SECRET = re.compile(r'id="new-secret" class="secret">(ak_[A-Za-z0-9]+)<')


def console_config(extra: str = "") -> str:
    """Mock models, plus console settings; sign-in throttling high unless a test lowers it."""
    defaults = "".join(f"{k} = {v}\n" for k, v in (("login_rpm_ip", 10000), ("login_rpm_account", 1000)) if k not in extra)
    return defaults + extra + "\n" + MOCK_CATALOG


def start_console_server(tmp, extra: str = "", env: dict[str, str] | None = None) -> Server:
    data = tmp
    config = write_config(data / "config.toml", console_config(extra))
    return Server(data, config, free_port(), env=env or {}).start()


def admin_password(server: Server) -> str:
    match = re.search(r"admin account admin@localhost \(password: ([^)]+)\)", server.log())
    assert match, server.log()
    return match.group(1)


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


@dataclass
class Browser:
    """An HTTP client that behaves like a browser on the console's plain HTML forms."""

    base_url: str
    client: httpx.Client = field(init=False)
    email: str = ""

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, follow_redirects=False, timeout=30)

    def get(self, path: str, **kw) -> httpx.Response:
        return self.client.get(path, **kw)

    def csrf(self, path: str = "/login") -> str:
        r = self.client.get(path)
        match = CSRF.search(r.text)
        assert match, f"no CSRF token on {path}: {r.status_code} {r.text[:300]}"
        return match.group(1)

    def post_form(self, path: str, data: dict[str, str], *, token_from: str | None = None, token: str | None = None) -> httpx.Response:
        if token is None:
            token = self.csrf(token_from or path)
        return self.client.post(path, data={"csrf_token": token, **data})

    def register(self, email: str | None = None, password: str = "correct horse battery", **extra: str) -> httpx.Response:
        self.email = email or unique_email()
        r = self.post_form("/register", {"email": self.email, "password": password, **extra}, token_from="/login")
        return r

    def login(self, email: str, password: str, token_from: str = "/login") -> httpx.Response:
        self.email = email
        return self.post_form("/login", {"email": email, "password": password}, token_from=token_from)

    def page_csrf(self) -> str:
        """The signed-in session's CSRF token (as the page's forms and htmx carry it)."""
        return self.csrf("/account")

    def api(self, method: str, path: str, json=None, csrf: bool = True, **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if csrf and method not in ("GET", "HEAD"):
            headers["X-CSRF-Token"] = self.page_csrf()
        return self.client.request(method, path, json=json, headers=headers, **kw)

    def create_key(self, name: str = "test key") -> tuple[int, str]:
        r = self.api("POST", "/api/v1/keys", {"name": name})
        assert r.status_code == 201, r.text
        return r.json()["key"]["id"], r.json()["secret"]

    @property
    def session(self) -> str | None:
        return self.client.cookies.get("lc_session")

    def close(self) -> None:
        self.client.close()


def signed_in(server: Server, email: str | None = None) -> Browser:
    b = Browser(server.base_url)
    r = b.register(email)
    assert r.status_code == 303, r.text
    return b


def admin_browser(server: Server) -> Browser:
    b = Browser(server.base_url)
    r = b.login("admin@localhost", admin_password(server))
    assert r.status_code == 303, r.text
    return b


@dataclass
class ApiUser:
    """An account driven through the console's JSON API alone (no pages): a session cookie and
    its CSRF token. Quicker than the CLI (no process per action), and it works through a proxy."""

    base_url: str
    email: str
    account_id: int
    csrf: str
    client: httpx.Client

    @classmethod
    def _signed(cls, base_url: str, path: str, email: str, password: str, status: int, **kw) -> ApiUser:
        client = httpx.Client(base_url=base_url, timeout=30, **kw)
        r = client.post(path, json={"email": email, "password": password})
        assert r.status_code == status, r.text
        body = r.json()
        return cls(base_url, email, body["account"]["id"], body["csrf_token"], client)

    @classmethod
    def register(cls, base_url: str, email: str | None = None, password: str = "correct horse battery", **kw) -> ApiUser:
        return cls._signed(base_url, "/api/v1/auth/register", email or unique_email(), password, 201, **kw)

    @classmethod
    def login(cls, base_url: str, email: str, password: str, **kw) -> ApiUser:
        return cls._signed(base_url, "/api/v1/auth/login", email, password, 200, **kw)

    def call(self, method: str, path: str, json=None, **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if method not in ("GET", "HEAD"):
            headers["X-CSRF-Token"] = self.csrf
        return self.client.request(method, path, json=json, headers=headers, **kw)

    def create_key(self, name: str = "test key") -> tuple[int, str]:
        r = self.call("POST", "/api/v1/keys", {"name": name})
        assert r.status_code == 201, r.text
        return r.json()["key"]["id"], r.json()["secret"]

    def close(self) -> None:
        self.client.close()
