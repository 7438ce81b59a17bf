"""Secrets are compared in constant time (`hmac.compare_digest`), never with `==` / `!=`.

A lint over src/: any `==` or `!=` where either side is named like a secret (a word of its name
is token, signature, secret, digest, csrf, password, hash, mac, nonce) fails, unless it
is a SQL expression (`table.c.token_hash == …` is a lookup by hash in the database, which is
fine) or listed below with the reason it is no secret."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "longcat"
WORDS = {"token", "signature", "secret", "digest", "hexdigest", "csrf", "password", "passwd", "hash", "mac", "nonce"}
ALLOWED = {
    # A model's token id against the separator token: vocabulary, not a credential.
    ("engines/embedded.py", "token == self.separator"),
    # The JSON literal (true/false/null) a streaming parser is reading.
    ("protocols/json_prefix.py", "self._token == word"),
}


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Call):
        return _names(node.func)
    if isinstance(node, ast.Subscript):
        return _names(node.value)
    return []


def _is_sql_column(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "c"


def secret_comparisons(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            continue
        sides = [node.left, *node.comparators]
        if any(_is_sql_column(side) for side in sides):
            continue
        words = {w for side in sides for name in _names(side) for w in name.lower().strip("_").split("_")}
        if words & WORDS:
            found.append(ast.unparse(node))
    return found


def test_no_secret_is_compared_with_equals():
    found = {
        (str(path.relative_to(SRC)), expr)
        for path in sorted(SRC.rglob("*.py"))
        for expr in secret_comparisons(path.read_text())
    }
    assert found - ALLOWED == set(), "use hmac.compare_digest for these: " + repr(sorted(found - ALLOWED))
    assert ALLOWED <= found, f"stale allowlist entries: {sorted(ALLOWED - found)}"


def test_the_lint_catches_what_it_should():
    assert secret_comparisons("ok = given_token == expected") == ["given_token == expected"]
    assert secret_comparisons("if request.headers['x'] != self.metrics_token: pass") != []
    assert secret_comparisons("same = sign(key, text) == signature") != []
    assert secret_comparisons("same = hashlib.sha256(x).hexdigest() == stored") != []
    assert secret_comparisons("q = select(t).where(t.c.token_hash == token_hash(token))") == []
    assert secret_comparisons("n = usage.output_tokens == 3; m = mode == 'tokenize'") == []
