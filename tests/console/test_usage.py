"""The Usage, Feedback, Playground and Admin pages' behaviour: filters, totals, CSV, live
updates, the playground's billing and both formats, feedback outcomes, admin changes audited."""

from __future__ import annotations

import csv
import io
import json
import re

import httpx

from tests.support.console import signed_in


def call(base: str, secret: str, model: str = "mock-echo", text: str = "hello world", stream: bool = False) -> str:
    r = httpx.post(base + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                   json={"model": model, "messages": [{"role": "user", "content": text}], "stream": stream})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def test_filters_totals_pagination_and_csv_of_exactly_the_filtered_rows(console_server):
    b = signed_in(console_server)
    k1, s1 = b.create_key("alpha")
    k2, s2 = b.create_key("=cmd|evil")  # a formula-looking name must stay text in the CSV
    ids = [call(console_server.base_url, s1) for _ in range(53)]
    ids += [call(console_server.base_url, s2, model="mock-thinking") for _ in range(4)]
    data = b.api("GET", "/api/v1/usage/records").json()
    assert data["totals"]["requests"] == 57 and data["pages"] == 2 and len(data["rows"]) == 50
    assert {r["name"]: r["requests"] for r in data["by_key"]} == {"alpha": 53, "=cmd|evil": 4}
    assert {r["id"]: r["requests"] for r in data["by_model"]} == {"mock-echo": 53, "mock-thinking": 4}
    page2 = b.api("GET", "/api/v1/usage/records?page=2").json()
    assert len(page2["rows"]) == 7 and {r["request_id"] for r in data["rows"] + page2["rows"]} == set(ids)
    only = b.api("GET", f"/api/v1/usage/records?key={k2}").json()
    assert only["totals"]["requests"] == 4 and {r["model"] for r in only["rows"]} == {"mock-thinking"}
    html = b.get(f"/usage?key={k2}&model=mock-thinking")
    assert html.status_code == 200 and "Total of all 4 matching requests" in html.text
    assert 'name="key"' in html.text and f'value="{k2}" selected' in html.text  # the filter stays in the page and URL
    rows = list(csv.reader(io.StringIO(b.get(f"/usage.csv?key={k2}").text)))
    assert rows[0][:3] == ["time_utc", "time_beijing", "request_id"]
    body, total = rows[1:-1], rows[-1]
    assert len(body) == 4 and {r[2] for r in body} == set(ids[-4:])
    assert all(r[3] == "'=cmd|evil" for r in body)
    assert total[0] == "total" and int(total[7]) == sum(int(r[7]) for r in body) == only["totals"]["input_tokens"]
    everything = list(csv.reader(io.StringIO(b.get("/usage.csv").text)))
    assert len(everything) == 57 + 2
    api_csv = b.get("/api/v1/usage/records.csv?model=mock-echo").text
    assert len(api_csv.strip().splitlines()) == 53 + 2
    for bad in ("key=abc", "status=nope", "from=2026-13-45", "to=yesterday", "page=-3", "model=" + "x" * 5000):
        r = b.get("/usage?" + bad)
        assert r.status_code in (200, 400), bad
        assert b.api("GET", "/api/v1/usage/records?" + bad).status_code in (200, 400)


def test_live_part_answers_204_until_something_changes(console_server):
    b = signed_in(console_server)
    _, secret = b.create_key("live")
    first = b.get("/usage/live")
    version = re.search(r"since=([0-9.]+)", first.text).group(1)
    assert b.get(f"/usage/live?since={version}").status_code == 204
    rid = call(console_server.base_url, secret)
    changed = b.get(f"/usage/live?since={version}")
    assert changed.status_code == 200 and rid in changed.text


def test_playground_is_billed_recorded_and_shown_in_both_formats(console_server):
    b = signed_in(console_server)
    token = b.page_csrf()
    for fmt, stream in (("openai", True), ("anthropic", False)):
        r = b.client.post("/api/v1/playground", headers={"X-CSRF-Token": token}, json={
            "format": fmt, "model": "mock-echo", "system": "be brief", "messages": [{"role": "user", "content": "say two words"}],
            "temperature": 0.5, "max_tokens": 50, "stream": stream})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [(m.group(1), json.loads(m.group(2))) for m in re.finditer(r"event: (\w+)\ndata: (.*)\n\n", r.text)]
        names = [n for n, _ in events]
        assert names[0] == "request" and names[-1] == "done" and "delta" in names
        request, done = events[0][1], events[-1][1]
        assert request["openai"]["messages"][0] == {"role": "system", "content": "be brief"}
        assert request["anthropic"]["system"] == "be brief" and request["anthropic"]["temperature"] == 0.5
        assert "$LONGCAT_API_KEY" in request["snippets"]["curl_openai"] and "ak_" not in json.dumps(request["snippets"])
        if stream:
            assert done["openai"].endswith("data: [DONE]\n\n") and "event: message_stop" in done["anthropic"]
        else:
            assert done["openai"]["object"] == "chat.completion" and done["anthropic"]["type"] == "message"
            assert done["openai"]["choices"][0]["message"]["content"] == done["anthropic"]["content"][0]["text"] == done["text"]
    usage = b.api("GET", "/api/v1/usage/records?key=0").json()
    assert usage["totals"]["requests"] == 2 and {r["endpoint"] for r in usage["rows"]} == {"playground"}
    assert usage["quota"]["used"] == usage["totals"]["billed_tokens"] > 0
    # Without JavaScript the form posts and the page shows the finished exchange.
    page = b.post_form("/playground", {"format": "openai", "model": "mock-echo", "message": "plain form", "max_tokens": "20", "temperature": "0"},
                       token_from="/playground")
    assert page.status_code == 200 and "chat.completion" in page.text and "plain form" in page.text
    bad = b.client.post("/api/v1/playground", headers={"X-CSRF-Token": token}, json={"messages": [], "model": "nope"})
    assert bad.status_code == 400


def test_playground_refuses_when_the_quota_is_spent(console_server, admin):
    b = signed_in(console_server)
    me = b.api("GET", "/api/v1/account").json()
    assert admin.api("PATCH", f"/api/v1/admin/users/{me['id']}", {"daily_quota": 3}).status_code == 200
    r = b.client.post("/api/v1/playground", headers={"X-CSRF-Token": b.page_csrf()},
                      json={"model": "mock-echo", "messages": [{"role": "user", "content": "this prompt is longer than three tokens"}]})
    events = dict((m.group(1), json.loads(m.group(2))) for m in re.finditer(r"event: (\w+)\ndata: (.*)\n\n", r.text))
    assert events["error"]["code"] == "insufficient_quota" and events["error"]["anthropic"]["type"] == "error"
    assert events["error"]["text"].startswith("Your daily quota cannot cover")
    b.client.cookies.set("lc_lang", "zh_CN", domain="127.0.0.1")
    page = b.post_form("/playground", {"format": "openai", "model": "mock-echo", "message": "this prompt is longer than three tokens"},
                       token_from="/playground")
    assert "你今天的额度不足以完成这次请求" in page.text and "insufficient_quota" in page.text


def test_feedback_outcome_remaining_and_history(console_server):
    b = signed_in(console_server)
    _, secret = b.create_key("fb")
    rid = call(console_server.base_url, secret)
    r = b.post_form("/feedback", {"rating": "5", "category": "quality", "text": "Clear and correct answer, thanks.", "request_id": rid},
                    token_from="/feedback")
    assert r.status_code == 200 and 'data-testid="feedback-outcome"' in r.text and "Valid submissions left today: 9" in r.text
    again = b.post_form("/feedback", {"rating": "5", "category": "quality", "text": "Clear and correct answer, thanks."}, token_from="/feedback")
    assert "repeats feedback you sent before" in again.text
    other = signed_in(console_server)
    stolen = other.post_form("/feedback", {"rating": "2", "category": "other", "text": "about someone else's request", "request_id": rid},
                             token_from="/feedback")
    assert stolen.status_code == 400 and "your own recent requests" in stolen.text
    history = b.api("GET", "/api/v1/feedback/history").json()
    assert [h["valid"] for h in history["data"]] == [False, True] and history["valid_remaining_today"] == 9
    for bad in ({"rating": "9", "text": "abcdefghijkl"}, {"rating": "x"}, {"category": "nope", "rating": "3", "text": "abcdefghijkl"}, {}):
        assert b.post_form("/feedback", bad, token_from="/feedback").status_code == 400


def test_admin_sets_a_quota_the_usage_page_shows_it_and_the_audit_log_has_it(console_server, admin):
    b = signed_in(console_server)
    me = b.api("GET", "/api/v1/account").json()
    r = admin.post_form(f"/admin/users/{me['id']}", {"action": "save", "daily_quota": "7,654,321", "rpm": "12", "tpm": "", "concurrency": "0"},
                        token_from=f"/admin/users/{me['id']}")
    assert r.status_code == 200 and "Saved." in r.text
    page = b.get("/usage").text
    assert re.search(r'data-testid="quota-allowance">7,654,321<', page)
    assert b.api("GET", "/api/v1/usage/records").json()["quota"]["daily_quota"] == 7_654_321
    detail = admin.api("GET", f"/api/v1/admin/users/{me['id']}").json()
    assert detail["account"]["rpm_limit"] == 12 and detail["account"]["concurrency_limit"] == 0 and detail["account"]["tpm_limit"] is None
    entry = detail["audit"][0]
    assert entry["action"] == "user.update" and entry["actor_email"] == "admin@localhost"
    assert entry["detail"]["daily_quota"]["to"] == 7_654_321
    assert "user.update" in admin.get("/admin/audit").text
    for bad in ({"daily_quota": "-5"}, {"daily_quota": "lots"}, {"rpm": "1e99"}, {"disabled": "maybe"}):
        assert admin.api("PATCH", f"/api/v1/admin/users/{me['id']}", bad).status_code == 400, bad
    assert admin.api("PATCH", "/api/v1/admin/users/999999", {"disabled": True}).status_code == 404
    assert admin.api("PATCH", f"/api/v1/admin/users/{me['id']}", {"daily_quota": None}).json()["daily_quota"] is None


def test_admin_sees_a_users_keys_and_disables_one(console_server, admin):
    b = signed_in(console_server)
    key_id, secret = b.create_key("seen by admin")
    me = b.api("GET", "/api/v1/account").json()
    page = admin.get(f"/admin/users/{me['id']}").text
    assert "seen by admin" in page and secret not in page
    assert admin.post_form(f"/admin/keys/{key_id}/disable", {}, token_from=f"/admin/users/{me['id']}").status_code == 303
    assert httpx.get(console_server.base_url + "/openai/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    audit = admin.api("GET", "/api/v1/admin/audit").json()["data"]
    assert audit[0]["action"] == "key.disable" and audit[0]["target_key_id"] == key_id and secret not in json.dumps(audit)
    found = admin.api("GET", f"/api/v1/admin/users?q={me['email'][:12]}").json()
    assert [u["email"] for u in found["data"]] == [me["email"]]
    assert admin.api("GET", "/api/v1/admin/users?q=%25_%5C").status_code == 200
    platform = admin.api("GET", f"/api/v1/admin/usage?account={me['id']}").json()
    assert "by_account" in platform


def test_admin_cannot_lock_themselves_out(console_server, admin):
    me = admin.api("GET", "/api/v1/account").json()
    assert admin.api("PATCH", f"/api/v1/admin/users/{me['id']}", {"disabled": True}).status_code == 400
    assert admin.api("PATCH", f"/api/v1/admin/users/{me['id']}", {"is_admin": False}).status_code == 400


def test_openapi_lists_every_endpoint(console_server):
    from longcat.console.routes import endpoints

    doc = httpx.get(console_server.base_url + "/api/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert {(e.method, e.path) for e in endpoints()} <= listed
    assert {("GET", "/api/v1/usage"), ("GET", "/api/v1/usage/daily"), ("POST", "/api/v1/feedback")} <= listed
    ops = [op for ops in doc["paths"].values() for op in ops.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    from openapi_spec_validator import validate

    validate(doc)  # raises on anything OpenAPI 3.1 does not allow
