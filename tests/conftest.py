from __future__ import annotations

import pytest

from tests.support.server import (
    EMBEDDED_CATALOG,
    MOCK_CATALOG,
    Server,
    free_port,
    scale_out_backend,
    write_config,
)


@pytest.fixture(scope="session")
def mock_server(tmp_path_factory):
    """A server whose catalog is all mock engines (LongCat-2.0-Preview scripted to call Bash once).

    It runs on the scale-out backend (PostgreSQL + Redis), so the protocol tests that use it
    cover that path; the servers that other tests start themselves use SQLite and in-process
    counters."""
    data = tmp_path_factory.mktemp("mock-server")
    config = write_config(data / "config.toml", MOCK_CATALOG)
    with scale_out_backend("mock") as env:
        server = Server(data, config, free_port(), env=env).start()
        server.key = server.new_key("tester@example.com")
        yield server
        server.stop()


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory):
    """A server with the default catalog: LongCat-2.0-Preview on the embedded SmolLM2 model."""
    data = tmp_path_factory.mktemp("embedded-server")
    config = write_config(data / "config.toml", EMBEDDED_CATALOG)
    server = Server(data, config, free_port()).start()
    server.key = server.new_key("tester@example.com")
    yield server
    server.stop()
