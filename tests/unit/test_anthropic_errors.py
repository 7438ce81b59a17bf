"""Every platform error, in Anthropic's envelope, becomes the SDK's matching exception.

Built through the route's own `anthropic_error` and the SDK's own status-to-exception mapping, so
errors no mock server can provoke yet (quota, rate limit, overload) are covered too.
"""

from __future__ import annotations

import anthropic
import httpx
import pytest

from longcat.api.anthropic import anthropic_error
from longcat.canonical import ApiError

CASES = [
    (ApiError("invalid_request", "invalid_parameter", "bad"), 400, "invalid_request_error", anthropic.BadRequestError),
    (ApiError("authentication", "invalid_api_key", "who?"), 401, "authentication_error", anthropic.AuthenticationError),
    (ApiError("permission", "insufficient_quota", "used up; refreshes at 00:00 Beijing time"), 403, "permission_error",
     anthropic.PermissionDeniedError),
    (ApiError("not_found", "model_not_found", "no such model"), 404, "not_found_error", anthropic.NotFoundError),
    (ApiError("rate_limit", "rate_limit_exceeded", "Request rate limit exceeded, please try again later",
              headers={"Retry-After": "60"}, extra={"retry_after": 60}), 429, "rate_limit_error", anthropic.RateLimitError),
    (ApiError("server", "internal_error", "oops"), 500, "api_error", anthropic.InternalServerError),
    (ApiError("upstream", "upstream_error", "engine"), 502, "api_error", anthropic.InternalServerError),
    (ApiError("overloaded", "overloaded", "busy"), 503, "overloaded_error", anthropic.ServiceUnavailableError),
]


@pytest.mark.parametrize(("err", "status", "kind", "exc"), CASES, ids=[c[0].code for c in CASES])
def test_error_maps_to_the_sdk_exception(err, status, kind, exc):
    response = anthropic_error(err)
    assert response.status_code == status
    wire = httpx.Response(status, content=response.body, headers=dict(response.headers),
                          request=httpx.Request("POST", "http://test/anthropic/v1/messages"))
    client = anthropic.Anthropic(api_key="x", base_url="http://test/anthropic", max_retries=0)
    raised = client._make_status_error_from_response(wire)
    assert type(raised) is exc
    body = wire.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["error"]["code"] == err.code and body["error"]["message"] == err.message
    if status == 429:
        assert body["error"]["retry_after"] == 60 and wire.headers["retry-after"] == "60"
