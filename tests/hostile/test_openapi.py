"""Schemathesis against `/api/v1/openapi.json`: every operation of the console API, with inputs
made from its schema (valid ones and, in negative mode, ones that break it), as an admin's API
key. Never a 5xx, an error is always the console API's envelope, and what the document
promises holds: a declared success status has its declared content type."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from longcat.console.openapi import document
from longcat.console.routes import endpoints
from tests.support.hostile import REQUEST_TIMEOUT, check_envelope, examples

pytestmark = pytest.mark.fuzz

PASSWORD = "correct horse battery staple"


class Protected:
    """What the fuzzer must not take away from itself: its key and its (admin) account. A case
    that names them is pointed at a spare key and another account instead."""

    def __init__(self, server) -> None:
        self.server = server
        self.key = server.cli("keys", "create", "admin@localhost", "--name", "schemathesis").stdout.strip().splitlines()[-1]
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT) as c:
            me = c.get("/api/v1/account").json()
            self.admin_id = me["id"]
            self.key_ids = {k["id"] for k in c.get("/api/v1/keys").json()["data"]}
            self.spare_key = c.post("/api/v1/keys", json={"name": "spare"}).json()["key"]["id"]
            other = c.post("/api/v1/admin/users", json={"email": "other@example.com", "password": PASSWORD})
            assert other.status_code == 201, other.text
            self.other_account = other.json()["account"]["id"]

    def steer(self, case) -> None:
        params = case.path_parameters or {}
        if str(params.get("key_id")) in {str(i) for i in self.key_ids}:
            params["key_id"] = self.spare_key
        if str(params.get("account_id")) == str(self.admin_id):
            params["account_id"] = self.other_account


@pytest.fixture(scope="module")
def protected(server):
    return Protected(server)


@pytest.fixture(scope="module")
def api_schema(server):
    """The document the server serves (checked to be the one the route table makes)."""
    served = httpx.get(server.base_url + "/api/v1/openapi.json", timeout=REQUEST_TIMEOUT).json()
    assert served["paths"] == DOCUMENT["paths"]
    return schemathesis.openapi.from_dict(served)


# The operations, known at collection time from the same route table the server serves.
DOCUMENT = document(endpoints(), "http://127.0.0.1")
OPERATIONS = sorted((method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_console_api(server, api_schema, protected, method, path, mode):
    operation = api_schema[path][method]

    @examples(ci=6)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        protected.steer(case)
        response = case.call(base_url=server.base_url, headers={"Authorization": f"Bearer {protected.key}"}, timeout=REQUEST_TIMEOUT)
        case.validate_response(response, checks=[not_a_server_error])
        headers = {k.lower(): v[-1] if isinstance(v, list) else v for k, v in response.headers.items()}
        check_envelope(path, response.status_code, headers, response.content)

    run()
