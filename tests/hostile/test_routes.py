"""Every route of the app is fuzzed: a route added without a plan in the hostile suite fails here."""

from __future__ import annotations

import pytest

from longcat.app import create_app
from longcat.config import ModelConfig, load_settings
from tests.hostile import test_console_fuzz, test_wire_fuzz

pytestmark = pytest.mark.fuzz

# Served by static file handlers (no input but the path): fuzzed as GET routes of their own.
MOUNTS = {"/static", "/docs/static"}


def served(tmp_path) -> tuple[set[tuple[str, str]], set[str]]:
    settings = load_settings(env={}, data_dir=str(tmp_path))
    settings.models = [ModelConfig(id="m", engine="mock", context_window=1000, max_output=100)]
    routes, mounts = set(), set()
    for route in create_app(settings).routes:
        methods = getattr(route, "methods", None)
        if not methods:
            mounts.add(route.path)
            continue
        routes |= {(m, route.path) for m in methods - {"HEAD"}}
    return routes, mounts


def test_every_route_is_fuzzed(tmp_path):
    routes, mounts = served(tmp_path)
    planned = test_wire_fuzz.PLANS | test_console_fuzz.PLANS
    assert routes - planned == set(), "routes without fuzz coverage: add them to a PLANS table in tests/hostile/"
    assert planned - routes == set(), "fuzz plans for routes that do not exist"
    assert mounts == MOUNTS == set(test_console_fuzz.STATIC_MOUNTS)
