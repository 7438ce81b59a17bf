"""The wire routes under hostile input: recorded client requests with fields broken, malformed
bytes, wrong types at every field, fuzzed ids and queries. Every answer is below 500, comes
within the timeout, and an error is the route's own envelope; the server stays healthy.

Every route of the app is in `PLANS` (here or in the console suite): a route added without fuzz
coverage fails `test_every_route_is_fuzzed` (tests/hostile/test_routes.py)."""

from __future__ import annotations

import copy
import math
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.hostile import (
    ABSURD_NUMBERS,
    RAW_VALUES,
    REQUEST_TIMEOUT,
    TEXT,
    broken_bytes,
    check_reply,
    encode,
    examples,
    fuzzing,
    healthy,
    mutated,
    pct,
    query_string,
    seeds_for,
    shapes,
)

pytestmark = pytest.mark.fuzz

# POST routes whose body is a JSON request of a wire format (both spellings of each).
BODY_ROUTES = [
    "/openai/v1/chat/completions",
    "/openai/chat/completions",
    "/openai/v1/responses",
    "/openai/responses",
    "/anthropic/v1/messages",
    "/anthropic/v1/messages/count_tokens",
    "/api/v1/feedback",
]
FEEDBACK = [
    {"rating": 4, "category": "quality", "text": "The answer was right and short."},
    {"rating": 1, "category": "other", "text": "It looped on the same tool call.", "request_id": "req_0123456789abcdef"},
]
# GET / DELETE routes: their path parameters and queries are fuzzed.
READ_ROUTES = [
    ("GET", "/health"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),  # with the fuzzer's API key, never the metrics token: always refused
    ("GET", "/openai/v1/responses/{response_id}"),
    ("DELETE", "/openai/v1/responses/{response_id}"),
    ("GET", "/openai/responses/{response_id}"),
    ("DELETE", "/openai/responses/{response_id}"),
    ("GET", "/openai/v1/models"),
    ("GET", "/openai/v1/models/{model_id:path}"),
    ("GET", "/openai/models"),
    ("GET", "/openai/models/{model_id:path}"),
    ("GET", "/anthropic"),
    ("GET", "/anthropic/"),
    ("GET", "/anthropic/v1/models"),
    ("GET", "/anthropic/v1/models/{model_id:path}"),
    ("GET", "/api/v1/usage"),
    ("GET", "/api/v1/usage/daily"),
]
PLANS = {("POST", r) for r in BODY_ROUTES} | set(READ_ROUTES)


def seeds(route: str) -> list[dict]:
    return FEEDBACK if route == "/api/v1/feedback" else seeds_for(route)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT, headers={"Authorization": f"Bearer {server.key}"}) as c:
        yield c


def post(client: httpx.Client, route: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    started = time.monotonic()
    r = client.post(route, content=content, headers={"Content-Type": "application/json", **(headers or {})})
    assert time.monotonic() - started < REQUEST_TIMEOUT, f"{route} took {time.monotonic() - started:.1f} s"
    check_reply(route, r)
    return r


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_the_seeds_themselves_are_accepted(client, route):
    """The starting points are valid requests, so the mutations below test what they change."""
    for body in seeds(route):
        r = post(client, route, encode(body))
        assert r.status_code in (200, 201), (route, r.text[:300])


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_mutated_client_requests(server, client, route):
    @examples(ci=40)
    @given(body=mutated(seeds(route)))
    def run(body):
        post(client, route, encode(body))

    run()
    healthy(server)


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_malformed_bytes(server, client, route):
    @examples(ci=15)
    @given(raw=broken_bytes(seeds(route)))
    def run(raw):
        post(client, route, raw)

    run()
    healthy(server)


WRONG = [None, True, "x", [], {}, -1, 1e308, math.nan, 2**64, {"type": "bogus"}]


@pytest.mark.parametrize("route", [r for r in BODY_ROUTES if "/v1/" in r])  # the bare aliases share the handlers
def test_a_wrong_value_at_every_field(server, client, route):
    """Each field of the recorded requests (one of each shape: list positions taken once) holds
    in turn a value of a wrong type and an absurd number or a raw splice (`make fuzz`: every one
    of them); none gets a 5xx."""
    sent = 0
    for n, (seed, path) in enumerate(shapes(seeds(route))):
        odd = RAW_VALUES[n // 2 % len(RAW_VALUES)] if n % 2 else ABSURD_NUMBERS[n // 2 % len(ABSURD_NUMBERS)]
        values = [*WRONG, *RAW_VALUES, *ABSURD_NUMBERS] if fuzzing() else [WRONG[n % len(WRONG)], odd]
        for value in values:
            body = copy.deepcopy(seed)
            node = body
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            post(client, route, encode(body))
            sent += 1
    assert sent >= 3
    healthy(server)


IDS = st.one_of(
    TEXT.filter(bool),
    st.sampled_from(["resp_" + "0" * 32, "LongCat-2.0-Preview", "mock-echo", "..", "../..", "%2e%2e", "a/b/c", "%00", "x" * 5000,
                     "\u202e", "resp_%ff%fe", "\ud7ff", "?x=1", "#"]),
)
QUERIES = st.dictionaries(
    st.sampled_from(["limit", "after_id", "before_id", "day", "days", "beta", "x", ""]),
    st.one_of(TEXT, st.sampled_from(["0", "-1", "1001", "1e9", "99999999999999999999", "2026-02-30", "9999-99-99", "", "NaN"])),
    max_size=4,
)


@pytest.mark.parametrize(("method", "route"), READ_ROUTES)
def test_ids_and_queries(server, client, method, route):
    @examples(ci=20)
    @given(ident=IDS, query=QUERIES)
    def run(ident, query):
        path = route.split("{")[0] + pct(ident) if "{" in route else route
        if query:
            path += "?" + query_string(query)
        r = client.request(method, path)
        check_reply(path, r)

    run()
    healthy(server)
