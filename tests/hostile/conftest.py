from __future__ import annotations

from contextlib import nullcontext

import pytest

from tests.support.hostile import healthy, start_server
from tests.support.server import scale_out_backend


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """One server per module: the mock catalog, no rate limits, a key, and the module's own
    `SERVER_SETTINGS` (TOML lines); on PostgreSQL and Redis when the module sets `SCALE_OUT`
    (databases refuse other values than SQLite does). Checked healthy, its log free of unhandled
    errors, at the end."""
    backend = scale_out_backend("hostile") if getattr(request.module, "SCALE_OUT", False) else nullcontext({})
    with backend as env:
        s = start_server(tmp_path_factory.mktemp("hostile"), getattr(request.module, "SERVER_SETTINGS", ""), env)
        yield s
        try:
            healthy(s)
        finally:
            s.stop()
