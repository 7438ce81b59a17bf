from __future__ import annotations

import pytest

from tests.support.console import admin_browser, signed_in, start_console_server


@pytest.fixture(scope="session")
def console_server(tmp_path_factory):
    """One server for the console tests (mock models, SQLite, in-process counters)."""
    server = start_console_server(tmp_path_factory.mktemp("console"))
    yield server
    server.stop()


@pytest.fixture
def user_a(console_server):
    b = signed_in(console_server)
    yield b
    b.close()


@pytest.fixture
def user_b(console_server):
    b = signed_in(console_server)
    yield b
    b.close()


@pytest.fixture
def admin(console_server):
    b = admin_browser(console_server)
    yield b
    b.close()
