"""Feedback against abuse: it is rate-limited like any request, disguised repeats are repeats,
padding does not make a text long enough, and a flood of refused submissions stores nothing."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import pytest

from tests.support.server import Server, free_port, write_config

CONFIG = """
feedback_daily_limit = 3
feedback_refresh_probability = 0.0

[[models]]
id = "mock-echo"
engine = "mock"
context_window = 1000
max_output = 100
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("abuse-feedback")
    srv = Server(data, write_config(data / "config.toml", CONFIG), free_port()).start()
    yield srv
    srv.stop()


def post(server: Server, key: str, text: str) -> httpx.Response:
    return httpx.post(
        server.base_url + "/api/v1/feedback",
        json={"rating": 3, "category": "quality", "text": text},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def stored(server: Server, email: str) -> list[tuple[int, str]]:
    with sqlite3.connect(server.data_dir / "longcat.db") as db:
        return db.execute(
            "SELECT f.valid, f.text FROM feedback f JOIN accounts a ON a.id = f.account_id WHERE a.email = ? ORDER BY f.id",
            (email,),
        ).fetchall()


def test_feedback_spam_meets_429(server):
    email = f"spam{uuid.uuid4().hex[:8]}@example.com"
    key = server.new_key(email, rpm=2)
    codes = [post(server, key, f"Spam message number {i} about nothing.").status_code for i in range(30)]
    assert codes == [201, 201] + [429] * 28
    assert len(stored(server, email)) == 2


def test_disguised_repeats_are_repeats(server):
    email = f"repeat{uuid.uuid4().hex[:8]}@example.com"
    key = server.new_key(email)
    assert post(server, key, "Great answers, thank you very much!").json()["valid"] is True
    for disguise in (
        "great answers,   THANK you very much!",
        "Great\u200b answers, thank\u200d you very much!\ufeff",  # zero-width space, joiner, BOM
        "Ｇｒｅａｔ answers, thank you very much！",  # full-width letters (NFKC)
    ):
        r = post(server, key, disguise).json()
        assert r["valid"] is False and "repeats" in r["reason"], disguise


def test_padding_does_not_make_a_text_long_enough(server):
    key = server.new_key(f"pad{uuid.uuid4().hex[:8]}@example.com")
    fillers = "\u3164\u2800\uffa0\u115f\u1160" * 4  # blank letters and symbols
    for padded in ("ok" + "\u200b" * 40, "ok " + " " * 40 + "!", "ok" + "\u0301" * 30, "ok" + fillers):
        r = post(server, key, padded).json()
        assert r["valid"] is False and "visible characters" in r["reason"], padded
    assert post(server, key, "真的很有帮助，谢谢你们的模型！").json()["valid"] is True  # 15 visible characters


def test_a_flood_of_refused_submissions_stores_nothing_more(server):
    email = f"flood{uuid.uuid4().hex[:8]}@example.com"
    key = server.new_key(email)
    results = [post(server, key, f"Distinct and valid feedback number {i}.").json() for i in range(3)]
    assert [r["valid"] for r in results] == [True] * 3 and results[-1]["valid_remaining_today"] == 0
    refused = [post(server, key, f"Another distinct piece of feedback {i}.").json() for i in range(20)]
    assert not any(r["valid"] for r in refused)
    assert [r["id"] is not None for r in refused] == [True] * 3 + [False] * 17
    rows = stored(server, email)
    assert len(rows) == 6 and sum(valid for valid, _ in rows) == 3
