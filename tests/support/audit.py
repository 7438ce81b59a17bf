"""`make audit`: pip-audit of the installed environment against the OSV vulnerability database.

pip-audit needs that database online. Where it cannot be reached (CI here reaches package
registries only) this says so in one line and exits EXIT_OFFLINE, having audited nothing; the
test suite's audit test skips with the same line. The OSV service is used rather than the
package index's, so an audit is one query per package to the vulnerability database, none to
the index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

OSV = "https://api.osv.dev/"
EXIT_OFFLINE = 3


def unreachable() -> str | None:
    """Why the vulnerability database cannot be reached, or None when it can."""
    try:
        httpx.get(OSV, timeout=5)  # any HTTP answer will do
    except httpx.HTTPError as exc:
        return f"cannot reach the OSV vulnerability database ({OSV}): {type(exc).__name__}: {exc}"
    return None


def pip_audit() -> subprocess.CompletedProcess[str]:
    """pip-audit of this interpreter's environment (the project itself, installed editable, skipped)."""
    binary = Path(sys.executable).with_name("pip-audit")
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "pip_audit"]
    return subprocess.run([*command, "--vulnerability-service", "osv", "--skip-editable", "--progress-spinner", "off"],
                          capture_output=True, text=True, timeout=900)


def main() -> int:
    reason = unreachable()
    if reason:
        print(f"audit: {reason}; nothing audited", file=sys.stderr)
        return EXIT_OFFLINE
    result = pip_audit()
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
