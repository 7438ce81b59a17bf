from longcat.gateway.auth import key_candidates


def test_bearer_and_x_api_key():
    assert key_candidates({"authorization": "Bearer ak_1"}) == ["ak_1"]
    assert key_candidates({"x-api-key": "ak_2"}) == ["ak_2"]


def test_seed_anthropic_sdk_quirk():
    # The seed passes api_key="Authorization: Bearer <key>" plus a Bearer header.
    headers = {"authorization": "Bearer ak_3", "x-api-key": "Authorization: Bearer ak_3"}
    assert key_candidates(headers) == ["ak_3"]


def test_valid_bearer_first_then_other_candidates():
    assert key_candidates({"authorization": "bearer ak_a", "x-api-key": "ak_b"}) == ["ak_a", "ak_b"]


def test_nothing():
    assert key_candidates({}) == []
    assert key_candidates({"authorization": "Bearer "}) == []
