"""The operator's command line: `longcat serve`, `longcat users …`, `longcat keys …`, `longcat config …`.

Every command reads the same settings as the server (`--data-dir`, `--config`, `LONGCAT_*`), so
it works on the same database whether the server is running or not.

A command that cannot run prints one line, `error: …`, to standard error and exits with
EXIT_CONFIG (a setting, a file, an account or key that is wrong) or EXIT_UNREACHABLE (the
database or Redis does not answer); never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from longcat.config import ConfigError, Settings, load_settings
from longcat.connect import ConnectError
from longcat.gateway.clock import beijing_day, make_clock
from longcat.store.accounts import AccountStore, LimitOverrides, StoreError
from longcat.store.credentials import new_password
from longcat.store.db import create_engine, create_schema
from longcat.store.keycache import TTL as KEY_CACHE_TTL
from longcat.store.keycache import publish_change
from longcat.store.probe import Unreachable, check_database, check_redis
from longcat.store.usage import UsageStore

ADMIN_EMAIL = "admin@localhost"
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where the database and files live (default ./data, or $LONGCAT_DATA_DIR)")
    parser.add_argument("--config", help="TOML settings file (default $LONGCAT_CONFIG, or <data-dir>/config.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longcat", description="Self-hostable LLM API platform.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the platform")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, help="processes serving the port (default 1; more need redis_url)")

    users = sub.add_parser("users", help="manage accounts").add_subparsers(dest="action", required=True)
    create = users.add_parser("create", help="create an account")
    _common(create)
    create.add_argument("email")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    create.add_argument("--admin", action="store_true", help="make the account an administrator")

    quota = users.add_parser("set-quota", help="set an account's daily token quota")
    _common(quota)
    quota.add_argument("email")
    quota.add_argument("tokens", help="tokens per day, or 'default' for the configured default")
    setpw = users.add_parser("set-password", help="set an account's password and sign out its console sessions")
    _common(setpw)
    setpw.add_argument("email")
    setpw.add_argument("--password-stdin", action="store_true", help="read the password from standard input (else one is generated)")
    usage = users.add_parser("usage", help="show an account's usage and quota for a day")
    _common(usage)
    usage.add_argument("email")
    usage.add_argument("--day", help="YYYY-MM-DD, a Beijing calendar day (default today)")
    ulimits = users.add_parser("set-limits", help="override an account's rate limits (0 = unlimited)")
    _common(ulimits)
    ulimits.add_argument("email")
    _limit_flags(ulimits)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    kcreate = keys.add_parser("create", help="create an API key; the key is printed alone on the last line")
    _common(kcreate)
    kcreate.add_argument("email")
    kcreate.add_argument("--name", default="default", help="a label for the key, 2-50 characters")
    klist = keys.add_parser("list", help="list an account's keys")
    _common(klist)
    klist.add_argument("email")
    kdisable = keys.add_parser("disable", help="disable a key (requests with it get 401)")
    _common(kdisable)
    kdisable.add_argument("key_id", type=int)
    kenable = keys.add_parser("enable", help="enable a disabled key")
    _common(kenable)
    kenable.add_argument("key_id", type=int)
    kdelete = keys.add_parser("delete", help="delete a key for good")
    _common(kdelete)
    kdelete.add_argument("key_id", type=int)
    klimits = keys.add_parser("set-limits", help="override a key's rate limits (0 = unlimited)")
    _common(klimits)
    klimits.add_argument("key_id", type=int)
    _limit_flags(klimits)
    _connect_parser(sub)

    config = sub.add_parser("config", help="check or show the settings").add_subparsers(dest="action", required=True)
    ccheck = config.add_parser(
        "check", help="validate the settings (file, environment, engine options, database, Redis) without starting",
    )
    _common(ccheck)
    ccheck.add_argument("--no-connect", action="store_true", help="do not try the database and Redis")
    cshow = config.add_parser("show", help="print the effective settings as TOML, secrets masked")
    _common(cshow)
    return parser


def _connect_parser(sub) -> None:
    from longcat.docs.agents import AGENTS

    connect = sub.add_parser(
        "connect", help="write or merge a coding agent's settings for this platform (backup, diff, --dry-run)",
        description="Write or merge a coding agent's user settings so it uses this platform: only the "
        "platform's own entries change, the file is backed up first and the diff is printed.",
    )
    _common(connect)
    connect.add_argument("agent", choices=AGENTS)
    connect.add_argument("--url", help="the deployment's base URL (default: public_url, else http://host:port)")
    connect.add_argument("--key", help="an API key to use (default: a new key made for --account)")
    connect.add_argument("--account", help="the account (email) a new key is made for when --key is not given")
    connect.add_argument("--model", help="the model to use by default (default: the deployment's first)")
    connect.add_argument("--home", help="the home directory whose settings are written (default: $HOME)")
    connect.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--concurrency", type=int, help="requests in flight")


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(args.config, data_dir=args.data_dir, **overrides)


def _with_store(settings: Settings, work: Callable[[AccountStore], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        await check_database(settings.resolved_database_url)  # one line, not a driver's traceback
        engine = create_engine(settings.resolved_database_url)
        try:
            await create_schema(engine)
            store = AccountStore(engine)
            result = await work(store)
            if store.changed:
                await _announce_change(settings)
            return result
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def _announce_change(settings: Settings) -> None:
    """A key or account changed: tell running servers (on Redis, if there is one), then wait
    out the servers' key cache, so that when the command returns the change is in force
    everywhere (see store/keycache.py)."""
    if settings.redis_url:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            await publish_change(client, settings.redis_prefix)
        finally:
            await client.aclose()
    await asyncio.sleep(KEY_CACHE_TTL)


# ------------------------------------------------------------------------------------ commands


def cmd_users_create(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    if args.password_stdin and len(password or "") < 8:
        raise StoreError("the password must be at least 8 characters")
    generated = password is None
    if generated:
        password = new_password()
    account = _with_store(_settings(args), lambda s: s.create_account(args.email, password, is_admin=args.admin))
    print(f"created account {account.id} {account.email}{' (admin)' if account.is_admin else ''}")
    if generated:
        print(f"password: {password}")
    return 0


def cmd_users_set_password(args: argparse.Namespace) -> int:
    from longcat.store.credentials import hash_password
    from longcat.store.sessions import SessionStore

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else new_password()
    if len(password) < 8:
        raise StoreError("the password must be at least 8 characters")

    async def work(store: AccountStore):
        account = await store.require_account(args.email)
        await store.update_account(account.id, password_hash=hash_password(password))
        return account, await SessionStore(store.engine).revoke_all(account.id)

    account, signed_out = _with_store(_settings(args), work)
    print(f"{account.email}: password changed; {signed_out} console session(s) signed out")
    if not args.password_stdin:
        print(f"password: {password}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    async def work(store: AccountStore):
        account = await store.require_account(args.email)
        return await store.create_key(account.id, args.name)

    key, secret = _with_store(_settings(args), work)
    print(f"created key {key.id} {key.name!r} for {args.email}; it is shown only this once:")
    print(secret)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def work(store: AccountStore):
        account = await store.require_account(args.email)
        return await store.list_keys(account.id)

    keys = _with_store(_settings(args), work)
    print(f"{'ID':>5}  {'NAME':<24} {'KEY':<16} {'STATUS':<9} {'CREATED (UTC)':<17} LAST USED (UTC)")
    for key in keys:
        created = _utc(key.created_at)
        used = _utc(key.last_used_at) if key.last_used_at else "never"
        print(f"{key.id:>5}  {key.name:<24} {key.hint:<16} {key.status:<9} {created:<17} {used}")
    return 0


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _cmd_key_status(status: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        key = _with_store(_settings(args), lambda s: s.set_key_status(args.key_id, status))
        print(f"key {key.id} {key.name!r} is now {key.status}")
        return 0

    return run


def cmd_users_set_quota(args: argparse.Namespace) -> int:
    if args.tokens == "default":
        tokens = None
    elif args.tokens.replace("_", "").replace(",", "").isdigit():
        tokens = int(args.tokens.replace("_", "").replace(",", ""))
    else:
        raise StoreError("TOKENS must be a whole number of tokens, or 'default'")
    settings = _settings(args)

    async def work(store: AccountStore):
        account = await store.require_account(args.email)
        await store.set_daily_quota(account.id, tokens)
        base = settings.daily_quota if tokens is None else tokens
        delta = await UsageStore(store.engine).adjust_base(account.id, beijing_day(make_clock(settings).now()), base)
        return base, delta

    base, delta = _with_store(settings, work)
    note = f" (today's allowance changed by {delta:+,})" if delta else ""
    print(f"{args.email}: daily quota {base:,} tokens{note}")
    return 0


def cmd_users_usage(args: argparse.Namespace) -> int:
    settings = _settings(args)
    day = args.day or beijing_day(make_clock(settings).now())

    async def work(store: AccountStore):
        account = await store.require_account(args.email)
        usage = UsageStore(store.engine)
        return account, await usage.quota_day(account.id, day), await usage.totals(account.id, day), await usage.daily_for_day(account.id, day)

    account, quota, totals, models = _with_store(settings, work)
    base = settings.daily_quota if account.daily_quota is None else account.daily_quota
    allowance = (quota.base + quota.granted) if quota else base
    used = quota.used if quota else 0
    print(f"{account.email}, {day} (Beijing time)")
    print(f"  quota     : {allowance:,} tokens (daily {quota.base if quota else base:,} + refreshes {quota.granted if quota else 0:,})")
    print(f"  used      : {used:,} tokens, {max(0, allowance - used):,} remain")
    print(f"  requests  : {totals['requests']:,}   input {totals['input_tokens']:,}   output {totals['output_tokens']:,}   cached {totals['cached_tokens']:,}")
    for row in models:
        print(f"    {row['model']:<28} {row['requests']:>7,} requests  {row['billed_tokens']:>12,} tokens")
    return 0


def _cmd_set_limits(scope: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        limits = LimitOverrides(args.rpm, args.tpm, args.concurrency)
        if limits == LimitOverrides():
            raise StoreError("give at least one of --rpm, --tpm, --concurrency")

        async def work(store: AccountStore):
            if scope == "key":
                key = await store.set_key_limits(args.key_id, limits)
                return f"key {key.id} {key.name!r}", await store.get_limits("key", key.id)
            account = await store.require_account(args.email)
            await store.set_account_limits(account.id, limits)
            return account.email, await store.get_limits("account", account.id)

        who, now = _with_store(_settings(args), work)
        shown = ", ".join(
            f"{name} {'default' if value is None else ('unlimited' if value == 0 else value)}"
            for name, value in (("rpm", now.rpm), ("tpm", now.tpm), ("concurrency", now.concurrency))
        )
        print(f"{who}: {shown}")
        return 0

    return run


def cmd_connect(args: argparse.Namespace) -> int:

    from longcat import connect as conn
    from longcat.docs.agents import Target

    settings = _settings(args)
    url = (args.url or settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    key = args.key
    if not key:
        if not args.account:
            raise conn.ConnectError("give --key, or --account to make a new key for that account")

        async def work(store: AccountStore):
            account = await store.require_account(args.account)
            return await store.create_key(account.id, f"{args.agent} (connect)")

        created, key = _with_store(settings, work)
        print(f"created key {created.id} {created.name!r} for {args.account}")
    home = Path(args.home).expanduser() if args.home else Path.home()
    env = {} if args.home else dict(os.environ)
    models = conn.order_models(conn.deployment_models(url, key, settings), args.model)
    target = Target(url, key, models)
    path = conn.config_path(args.agent, home, env)
    result = conn.connect(args.agent, target, path, dry_run=args.dry_run)
    if not result.changed:
        print(f"{path}: already up to date")
    else:
        print(result.diff, end="" if result.diff.endswith("\n") else "\n")
        if args.dry_run:
            print(f"(dry run: {path} not written)")
        else:
            print(f"wrote {path}" + (f"; the previous version is in {result.backup}" if result.backup else ""))
    for note in result.notes:
        print(note)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from longcat.app import create_app
    from longcat.engines import catalog
    from longcat.serving import build_server
    from longcat.supervisor import check_workers, serve_workers

    settings = _settings(args, host=args.host, port=args.port, workers=args.workers)
    check_workers(settings)
    catalog.check(settings)
    configure_logging(settings.log_level, settings.log_format, process_ids=settings.workers > 1)
    _make_data_dir(settings)
    if settings.redis_url:
        asyncio.run(check_redis(settings.redis_url))
    # Migrations and the first-start account happen here, once, before any worker exists.
    first = _with_store(settings, bootstrap)
    print_banner(settings, first)
    if settings.workers > 1:
        return serve_workers(settings)
    app = create_app(settings)
    build_server(app, settings, on_exit=lambda: app.state.gateway.request_shutdown(settings.shutdown_grace)).run()
    return 0


def _make_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data_dir = {str(settings.data_dir)!r}: cannot be created ({exc.strerror or exc})") from None


def _writable_dir(path: Path) -> None:
    """The directory exists and is writable, or could be created: checked without creating it."""
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"data_dir = {str(path)!r}: {probe} is not a writable directory")


def cmd_config_check(args: argparse.Namespace) -> int:
    from longcat.config import unknown_env
    from longcat.engines import catalog

    settings = _settings(args)
    catalog.check(settings)
    for note in unknown_env(dict(os.environ)):
        print(f"warning: {note}", file=sys.stderr)
    reached = ""
    if not args.no_connect:
        if settings.database_url:
            asyncio.run(check_database(settings.database_url))
        else:
            _writable_dir(settings.data_dir)  # SQLite: the file is created on the first start
        if settings.redis_url:
            asyncio.run(check_redis(settings.redis_url))
        reached = "; database" + (" and Redis" if settings.redis_url else "") + " reachable"
    models = ", ".join(f"{m.id} ({m.engine})" for m in settings.models)
    print(f"ok: {len(settings.models)} model{'s' if len(settings.models) != 1 else ''}: {models}{reached}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from longcat.config_show import render

    print(render(_settings(args)), end="")
    return 0


async def bootstrap(store: AccountStore) -> tuple[str, str] | None:
    """On the very first start, create the admin account and one key; returns (password, key)."""
    if await store.count_accounts():
        return None
    password = new_password()
    try:
        account = await store.create_account(ADMIN_EMAIL, password, is_admin=True)
    except StoreError:
        return None  # another replica starting at the same moment made it first
    _key, secret = await store.create_key(account.id, "default")
    return password, secret


def print_banner(settings: Settings, first: tuple[str, str] | None) -> None:
    base = f"http://{settings.host}:{settings.port}"
    model = settings.models[0].id if settings.models else "LongCat-2.0-Preview"
    lines = [
        "LongCat API platform",
        f"  data dir : {settings.data_dir.resolve()}",
        f"  database : {settings.resolved_database_url.split('://')[0].split('+')[0]}",
        *([f"  workers  : {settings.workers} processes"] if settings.workers > 1 else []),
        "  models   : " + ", ".join(f"{m.id} ({m.engine}, context {m.context_window:,})" for m in settings.models),
        f"  OpenAI   : {base}/openai/v1",
        f"  Anthropic: {base}/anthropic",
        f"  Console  : {base}/",
    ]
    if first:
        password, key = first
        lines += [
            "",
            f"First start: created the admin account {ADMIN_EMAIL} (password: {password}).",
            f"Sign in to the console at {base}/login as {ADMIN_EMAIL} with that password.",
            "Your API key (shown only this once; store it now):",
            f"  {key}",
            "Try it:",
            f"  curl -X POST {base}/openai/v1/chat/completions -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 100}}'",
        ]
    print("\n".join(lines), flush=True)


def configure_logging(level: str, log_format: str = "auto", *, process_ids: bool = False) -> None:
    """Every logger to stderr, as JSON lines or text (`log_format`; auto: text on a terminal);
    `process_ids`: each line names its process (`longcat serve --workers N`)."""
    from longcat.observe.logs import configure

    configure(level, log_format, sys.stderr, process_ids=process_ids)
    # httpx logs every request's full URL at INFO: a line per upstream call, and an upstream URL
    # may carry credentials. Secrets never go to the logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)


HANDLERS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("serve", None): cmd_serve,
    ("users", "create"): cmd_users_create,
    ("users", "set-password"): cmd_users_set_password,
    ("keys", "create"): cmd_keys_create,
    ("keys", "list"): cmd_keys_list,
    ("keys", "disable"): _cmd_key_status("disabled"),
    ("keys", "enable"): _cmd_key_status("enabled"),
    ("keys", "delete"): _cmd_key_status("deleted"),
    ("keys", "set-limits"): _cmd_set_limits("key"),
    ("users", "set-quota"): cmd_users_set_quota,
    ("users", "usage"): cmd_users_usage,
    ("users", "set-limits"): _cmd_set_limits("account"),
    ("connect", None): cmd_connect,
    ("config", "check"): cmd_config_check,
    ("config", "show"): cmd_config_show,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = HANDLERS[(args.command, getattr(args, "action", None))]
    try:
        return handler(args)
    except (ConfigError, StoreError, ConnectError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
