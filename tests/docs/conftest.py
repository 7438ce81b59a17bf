from __future__ import annotations

import pytest

from tests.support.console import start_console_server


@pytest.fixture(scope="session")
def docs_server(tmp_path_factory):
    """A real server (mock models, SQLite) serving the docs site and the console."""
    server = start_console_server(tmp_path_factory.mktemp("docs"))
    server.key = server.new_key("docs-reader@example.com", name="reader")
    yield server
    server.stop()
