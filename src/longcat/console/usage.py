"""The Usage pages (the account's, and the admin's platform-wide one) and their JSON twins.

One filter in the URL (key, model, status, from, to, page) drives the rows on screen, the
totals row, the breakdowns and the CSV export, so the export holds exactly the filtered rows.
The live part is polled every second with the version it shows; the server answers 204 (no
change, nothing to swap) until a request lands or the quota moves, so polling stays cheap.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from longcat.console import charts
from longcat.console.apispec import NS, Api, I, S, arr, obj
from longcat.console.state import Console
from longcat.console.web import Ctx, console, endpoint, json_ok, page
from longcat.gateway.actions import N_, ActionError, row_id
from longcat.gateway.clock import BEIJING, beijing_day
from longcat.gateway.feedback import quota_body
from longcat.gateway.principal import Principal
from longcat.store.usage_log import STATUSES, LogFilter

PER_PAGE = 50
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FILTER_KEYS = ("key", "model", "status", "from", "to", "account")


def _day(value: str, field: str) -> str | None:
    if not value:
        return None
    try:
        if not _DAY.match(value):
            raise ValueError
        dt.date.fromisoformat(value)
    except ValueError:
        raise ActionError("invalid_date", N_("Dates look like 2026-01-31."), field=field) from None
    return value


def parse_filter(query, account_id: int | None, today: str, admin: bool = False) -> tuple[LogFilter, int, dict[str, str]]:
    """The filter, the page number and the filter's own query values (for links)."""
    raw = {k: (query.get(k) or "").strip()[:200] for k in FILTER_KEYS}
    key_id = None
    if raw["key"]:
        key_id = row_id(raw["key"], minimum=0)  # 0: the console's own requests (the playground)
        if key_id is None:
            raise ActionError("invalid_key", N_("Choose a key from the list."), field="key")
    if raw["status"] and raw["status"] not in STATUSES:
        raise ActionError("invalid_status", N_("Choose a status from the list."), field="status")
    if admin and raw["account"]:
        account_id = row_id(raw["account"])
        if account_id is None:
            raise ActionError("invalid_account", N_("The account is a number."), field="account")
    day_from = _day(raw["from"], "from")
    day_to = _day(raw["to"], "to")
    if not day_from and not day_to:
        day_from = charts.days_back(today, 30)[0]
        raw["from"] = day_from
    try:
        number = max(1, min(int(query.get("page") or 1), 100_000))
    except ValueError:
        number = 1
    f = LogFilter(account_id, key_id, raw["model"] or None, raw["status"] or None, day_from, day_to)
    return f, number, {k: v for k, v in raw.items() if v}


async def version(c: Console, f: LogFilter, quota: dict[str, Any] | None) -> str:
    """Changes whenever something the page shows may have: a new record, the quota moving."""
    q = quota or {}
    top = await c.usage_log.latest_id(f.account_id)
    return f"{top}.{q.get('used', 0)}.{q.get('in_flight', 0)}.{q.get('granted', 0)}.{q.get('daily_quota', 0)}"


async def live_version(c: Console, who: Principal, query, admin: bool) -> str:
    """The version `usage_data` would report, at the cost of two lookups (for the 204 answer)."""
    now = c.gateway.clock.now()
    f, _n, _v = parse_filter(query, None if admin else who.account.id, beijing_day(now), admin)
    quota = None if admin else quota_body(await c.gateway.quota.status(who.account.id, who.account.daily_quota, now))
    return await version(c, f, quota)


async def usage_data(c: Console, who: Principal, query, *, admin: bool, lang: str = "en", with_rows: bool = True) -> dict[str, Any]:
    now = c.gateway.clock.now()
    today = beijing_day(now)
    f, number, values = parse_filter(query, None if admin else who.account.id, today, admin)
    quota = None
    if not admin:
        quota = quota_body(await c.gateway.quota.status(who.account.id, who.account.daily_quota, now))
    summary = await c.usage_log.summary(f, by="account_id" if admin else "key_id")
    total = summary["totals"]["requests"]
    pages = max(1, -(-total // PER_PAGE))
    number = min(number, pages)
    rows = await c.usage_log.page(f, PER_PAGE, (number - 1) * PER_PAGE) if with_rows else []
    names = await c.accounts.key_names(None if admin else who.account.id)
    since = charts.days_back(today, 30)[0]
    daily = await c.usage_log.daily(f.account_id, since)
    emails = await c.usage_log.emails({r["id"] for r in summary.get("by_account", [])} | {r["account_id"] for r in rows}) if admin else {}
    keys = [] if admin else await c.keys.list(who.account.id)
    return {
        "admin": admin,
        "today": today,
        "quota": quota,
        "filter": values,
        "page": number,
        "pages": pages,
        "per_page": PER_PAGE,
        "rows": rows,
        "summary": summary,
        "key_names": names,
        "emails": emails,
        "keys": keys,
        "models": await c.usage_log.models(f.account_id),
        "statuses": STATUSES,
        "daily": daily,
        "chart": charts.daily_tokens(daily, today, lang),
        "version": await version(c, f, quota),
    }


def key_label(key_id: int, names: dict[int, str]) -> str:
    return names.get(key_id, "console" if key_id == 0 else f"#{key_id}")


def _links(values: dict[str, str], number: int) -> str:
    return urlencode({**values, "page": number}) if number > 1 else urlencode(values)


async def _usage_page(ctx: Ctx, admin: bool) -> Response:
    assert ctx.user is not None
    base = "/admin/usage" if admin else "/usage"
    live = ctx.request.url.path.endswith("/live")
    try:
        since = ctx.request.query_params.get("since")
        if live and since and since == await live_version(ctx.c, ctx.user, ctx.request.query_params, admin):
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        data = await usage_data(ctx.c, ctx.user, ctx.request.query_params, admin=admin, lang=ctx.lang, with_rows=True)
    except ActionError as e:
        return ctx.render("notice.html", status=e.status, title=ctx.gettext("Something is not right"), message=ctx.err(e))
    data.update(base=base, query=urlencode(data["filter"]), link=lambda n: f"{base}?{_links(data['filter'], n)}", key_label=key_label)
    return ctx.render("_usage_live.html" if live else "usage.html", **data)


@page()
async def usage_page(ctx: Ctx) -> Response:
    return await _usage_page(ctx, admin=False)


@page(auth="admin")
async def admin_usage_page(ctx: Ctx) -> Response:
    return await _usage_page(ctx, admin=True)


def _cell(value: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas: key names are the user's text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


async def csv_rows(c: Console, who: Principal, query, admin: bool) -> tuple[AsyncIterator[str], str]:
    today = beijing_day(c.gateway.clock.now())
    f, _page, _values = parse_filter(query, None if admin else who.account.id, today, admin)
    names = await c.accounts.key_names(None if admin else who.account.id)
    header = ["time_utc", "time_beijing", "request_id"] + (["account_id"] if admin else []) + [
        "key", "model", "endpoint", "stream", "input_tokens", "output_tokens", "cached_tokens", "billed_tokens", "status", "latency_ms"]

    async def lines() -> AsyncIterator[str]:
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(header)
        sums = [0, 0, 0, 0]
        count = 0
        async for r in c.usage_log.rows(f):
            count += 1
            sums = [sums[0] + r["input_tokens"], sums[1] + r["output_tokens"], sums[2] + r["cached_tokens"], sums[3] + r["billed_tokens"]]
            when = dt.datetime.fromtimestamp(r["created_at"], dt.UTC)
            out.writerow([when.isoformat(timespec="seconds").replace("+00:00", "Z"), when.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
                          r["request_id"]] + ([r["account_id"]] if admin else []) + [
                _cell(key_label(r["key_id"], names)), _cell(r["model"]), r["endpoint"], "true" if r["stream"] else "false",
                r["input_tokens"], r["output_tokens"], r["cached_tokens"], r["billed_tokens"], r["status"], r["latency_ms"]])
            if count % 500 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        out.writerow(["total", "", f"{count} requests"] + ([""] if admin else []) + ["", "", "", "", *sums, "", ""])
        yield buf.getvalue()

    name = f"{'platform-' if admin else ''}usage-{f.day_from or 'start'}-to-{f.day_to or today}.csv"
    return lines(), name


async def _csv_response(c: Console, who: Principal, query, admin: bool) -> Response:
    body, name = await csv_rows(c, who, query, admin)
    return StreamingResponse(body, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@page()
async def usage_csv(ctx: Ctx) -> Response:
    assert ctx.user is not None
    return await _csv_response(ctx.c, ctx.user, ctx.request.query_params, admin=False)


@page(auth="admin")
async def admin_usage_csv(ctx: Ctx) -> Response:
    assert ctx.user is not None
    return await _csv_response(ctx.c, ctx.user, ctx.request.query_params, admin=True)


# ------------------------------------------------------------------------------------ JSON


def _json(data: dict[str, Any]) -> dict[str, Any]:
    names = data["key_names"]
    rows = [{**{k: v for k, v in r.items() if k != "id"}, "key": None if data["admin"] else key_label(r["key_id"], names)} for r in data["rows"]]
    s = data["summary"]
    out = {
        "filter": data["filter"], "page": data["page"], "pages": data["pages"], "per_page": data["per_page"],
        "totals": s["totals"], "by_model": s["by_model"], "rows": rows,
        "daily": [{"day": d, **v} for d, v in sorted(data["daily"].items())],
    }
    if data["admin"]:
        out["by_account"] = [{**r, "email": data["emails"].get(r["id"])} for r in s["by_account"]]
    else:
        out["by_key"] = [{**r, "name": key_label(r["id"], names)} for r in s["by_key"]]
        out["quota"] = data["quota"]
    return out


@endpoint()
async def api_records(request: Request, who: Principal | None) -> Response:
    assert who is not None
    return json_ok(_json(await usage_data(console(request), who, request.query_params, admin=False)))


@endpoint()
async def api_records_csv(request: Request, who: Principal | None) -> Response:
    assert who is not None
    return await _csv_response(console(request), who, request.query_params, admin=False)


@endpoint(auth="admin")
async def api_admin_usage(request: Request, who: Principal | None) -> Response:
    assert who is not None
    return json_ok(_json(await usage_data(console(request), who, request.query_params, admin=True)))


@endpoint(auth="admin")
async def api_admin_usage_csv(request: Request, who: Principal | None) -> Response:
    assert who is not None
    return await _csv_response(console(request), who, request.query_params, admin=True)


FILTER_PARAMS = (
    ("key", "query", "integer", "a key id (0: the console's playground)"),
    ("model", "query", "string", "a model id"),
    ("status", "query", "string", "how requests ended: " + ", ".join(STATUSES)),
    ("from", "query", "string", "first Beijing day, YYYY-MM-DD (default: 29 days ago)"),
    ("to", "query", "string", "last Beijing day, YYYY-MM-DD"),
    ("page", "query", "integer", f"page of {PER_PAGE} rows, newest first"),
)
SUMS = obj(requests=I, input_tokens=I, output_tokens=I, cached_tokens=I, billed_tokens=I, latency_ms=I)
ROW = obj(request_id=S, created_at={"type": "number"}, account_id=I, key_id=I, key=NS, model=S, endpoint=S, stream={"type": "boolean"},
          input_tokens=I, output_tokens=I, cached_tokens=I, billed_tokens=I, status=S, latency_ms=I, day=S)
LOG = obj(filter={"type": "object"}, page=I, pages=I, per_page=I, totals=SUMS, by_key=arr(SUMS), by_model=arr(SUMS), rows=arr(ROW),
          daily=arr({"type": "object"}), quota={"type": "object"})
ENDPOINTS = [
    Api("GET", "/api/v1/usage/records", api_records, "The request log, filtered, with totals and breakdowns by key and model", "usage",
        params=FILTER_PARAMS, response=LOG),
    Api("GET", "/api/v1/usage/records.csv", api_records_csv, "Every filtered request as CSV, with a totals row", "usage",
        params=FILTER_PARAMS[:-1], produces="text/csv"),
    Api("GET", "/api/v1/admin/usage", api_admin_usage, "Platform-wide request log, by account and model", "admin", auth="admin",
        params=(*FILTER_PARAMS, ("account", "query", "integer", "an account id")), response=LOG),
    Api("GET", "/api/v1/admin/usage.csv", api_admin_usage_csv, "Platform-wide filtered requests as CSV, with a totals row", "admin",
        auth="admin", params=(*FILTER_PARAMS[:-1], ("account", "query", "integer", "an account id")), produces="text/csv"),
]

PAGES = [
    Route("/usage", usage_page, methods=["GET"]),
    Route("/usage/live", usage_page, methods=["GET"]),
    Route("/usage.csv", usage_csv, methods=["GET"]),
    Route("/admin/usage", admin_usage_page, methods=["GET"]),
    Route("/admin/usage/live", admin_usage_page, methods=["GET"]),
    Route("/admin/usage.csv", admin_usage_csv, methods=["GET"]),
]
