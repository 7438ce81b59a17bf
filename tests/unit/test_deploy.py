"""The files in deploy/: the production settings load with the platform's own loader and say
what they should, the environment file names only real settings, and the systemd units are
valid for systemd and for `longcat serve`."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from longcat.cli import build_parser
from longcat.config import Settings, load_settings
from longcat.engines.openai_compat import parse_options

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTING_NAMES = set(Settings.__dataclass_fields__) - {"models", "config_file"}


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "longcat.env.example").read_text().splitlines():
        match = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            values[match.group(1)] = shlex.split(match.group(2))[0] if match.group(2) else ""
    return values


def test_the_production_settings_load_and_keep_no_secret():
    settings = load_settings(DEPLOY / "longcat.toml", env={})
    db, redis = make_url(settings.database_url), make_url(settings.redis_url)
    assert db.drivername == "postgresql+asyncpg" and db.password is None
    assert redis.drivername == "redis" and redis.password is None
    assert settings.public_url.startswith("https://") and settings.trusted_proxies
    assert settings.secret_key == "" and settings.registration == "invite"
    assert settings.models and all(m.engine == "openai_compat" for m in settings.models)
    for model in settings.models:
        options = parse_options(model, env={"VLLM_API_KEY": "from-the-environment"})
        assert len(options.base_urls) >= 2, f"{model.id}: one upstream replica only"
        assert "api_key" not in model.options  # keys come from the environment
        assert model.max_output <= model.context_window


def test_the_environment_file_overrides_the_urls_and_names_only_real_settings():
    values = env_example()
    platform = {k for k in values if k.startswith("LONGCAT_")}
    assert {"LONGCAT_SECRET_KEY", "LONGCAT_DATABASE_URL", "LONGCAT_REDIS_URL"} <= platform
    assert {k[len("LONGCAT_"):].lower() for k in platform} <= SETTING_NAMES, "a variable the platform would ignore"
    # Every api_key_env of the catalog has its line.
    wanted = {m.options["api_key_env"] for m in load_settings(DEPLOY / "longcat.toml", env={}).models if "api_key_env" in m.options}
    assert wanted <= set(values)
    env = {k: v for k, v in values.items() if v}
    settings = load_settings(DEPLOY / "longcat.toml", env=env)
    assert make_url(settings.database_url).password == "PASSWORD" and make_url(settings.redis_url).password == "PASSWORD"


def exec_start(unit: Path) -> list[str]:
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart="):])


@pytest.mark.parametrize("unit, instance", [("longcat.service", "longcat.service"), ("longcat@.service", "longcat@8001.service")])
def test_the_systemd_units(tmp_path, unit, instance):
    argv = exec_start(DEPLOY / "systemd" / unit)
    assert argv[0] == "/opt/longcat/bin/longcat"
    args = build_parser().parse_args([a.replace("%i", "8001") for a in argv[1:]])
    assert (args.command, args.host, args.config, args.data_dir) == ("serve", "127.0.0.1", "/etc/longcat/longcat.toml", "/var/lib/longcat")
    text = (DEPLOY / "systemd" / unit).read_text()
    for needed in ("User=longcat", "EnvironmentFile=/etc/longcat/longcat.env", "Restart=on-failure", "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "StateDirectory=longcat"):
        assert needed in text.splitlines(), needed
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd): the units' syntax is not checked")
    # Verified as installed, with the longcat of this environment in place of /opt/longcat's.
    longcat = Path(sys.executable).with_name("longcat")
    if not longcat.exists():
        pytest.skip(f"{longcat} is missing: systemd-analyze needs ExecStart to point at an executable")
    (tmp_path / unit).write_text(text.replace("/opt/longcat/bin/longcat", str(longcat)))
    result = subprocess.run([analyze, "verify", str(tmp_path / instance)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
