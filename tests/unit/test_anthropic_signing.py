"""Thinking signatures: made with the server's key, checked when a client sends a block back."""

from __future__ import annotations

import pytest

from longcat.gateway.signing import Signer, sign, verify


def test_round_trip():
    signer = Signer(b"k1")
    sig = signer.sign_thinking("I should list the files first.")
    assert sig.startswith("lc2.") and signer.verify_thinking("I should list the files first.", sig)


@pytest.mark.parametrize(
    ("text", "signature"),
    [
        ("I should list the files first!", Signer(b"k1").sign_thinking("I should list the files first.")),
        ("same text", Signer(b"another key").sign_thinking("same text")),
        ("same text", sign(b"k1", "session", "same text")),
        ("same text", "EqQBCkgIARABGAIiQLJx"),
        ("same text", ""),
        ("same text", "lc1."),
    ],
)
def test_rejects_what_this_key_did_not_sign_for_this_text(text, signature):
    assert not Signer(b"k1").verify_thinking(text, signature)


def test_unicode_and_empty_text():
    signer = Signer(b"k1")
    for text in ("", "思考：先列出文件。", "emoji 🐱"):
        assert signer.verify_thinking(text, signer.sign_thinking(text))


def test_purpose_separates_uses_and_key_is_required():
    assert verify(b"k", "a", "t", sign(b"k", "a", "t"))
    assert not verify(b"k", "b", "t", sign(b"k", "a", "t"))
    assert not verify(b"k", "a", "t", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Signer(b"")


def test_a_signature_holds_for_its_account_only():
    signer = Signer(b"k1")
    sig = signer.sign_thinking("Plan: list files.", account=7)
    assert signer.verify_thinking("Plan: list files.", sig, account=7)
    assert not signer.verify_thinking("Plan: list files.", sig, account=8)
    assert not signer.verify_thinking("Plan: list files.", sig)
