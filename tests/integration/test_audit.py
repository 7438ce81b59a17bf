"""pip-audit finds no known vulnerability in the installed environment, when its database is
reachable; offline (CI here reaches package registries only) the test skips and says why."""

from __future__ import annotations

import pytest

from tests.support.audit import pip_audit, unreachable


def test_pip_audit_is_clean():
    pytest.importorskip("pip_audit", reason="pip-audit is not installed (the dev extra has it)")
    reason = unreachable()
    if reason:
        pytest.skip(f"pip-audit: {reason}; run `make audit` where it is reachable")
    result = pip_audit()
    assert result.returncode == 0, result.stdout + result.stderr
