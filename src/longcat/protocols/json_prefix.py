"""Streamed tool arguments that always add up to one JSON object.

Anthropic clients parse `input_json_delta` text as it arrives and the final text as the tool's
input, so every prefix the platform sends must still be able to become a JSON object, and the
whole must be one. Engines normally guarantee that; a model writing its calls as text may not.
`JsonObjectPrefix` lets through the longest acceptable prefix of what the engine wrote and, when
the call ends early or goes wrong, supplies the few characters that close it.
"""

from __future__ import annotations

import re

_WS = " \t\n\r"
_NUMBER_PREFIX = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.(?:[0-9]+(?:[eE][+-]?[0-9]*)?)?|[eE][+-]?[0-9]*)?)?")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_ESCAPES = set('"\\/bfnrtu')
_HEX = set("0123456789abcdefABCDEF")


class JsonObjectPrefix:
    """Feed text piece by piece; `feed` returns the part safe to send, `close` what completes it.

    Modes: `start` (expecting `{`), `key_or_end` (after `{`), `key` (after a comma in an object),
    `colon`, `value`, `value_or_end` (after `[`), `after_value`, `string`, `number`, `literal`,
    `done`. A comma is held back until what follows it arrives, so closing never has to invent
    a key or a value after it.
    """

    __slots__ = ("_stack", "_mode", "_token", "_key", "_escape", "_hex_left", "_held", "broken", "sent")

    def __init__(self) -> None:
        self._stack: list[str] = []
        self._mode = "start"
        self._token = ""
        self._key = False
        self._escape = False
        self._hex_left = 0
        self._held = ""
        self.broken = False
        self.sent = ""

    @property
    def done(self) -> bool:
        return self._mode == "done"

    def feed(self, piece: str) -> str:
        out: list[str] = []
        for ch in piece:
            if self.broken:
                break
            before = self._mode
            if not self._step(ch):
                self.broken = True
                break
            if ch == "," and before != "string":
                self._held = ","
            elif self._held and ch in _WS and self._mode in ("key", "value"):
                self._held += ch
            elif self._mode == "start":
                continue  # leading whitespace: a client cannot parse a blank buffer
            else:
                out.append(self._held + ch)
                self._held = ""
        text = "".join(out)
        self.sent += text
        return text

    def close(self) -> str:
        """The suffix that turns everything sent so far into one complete JSON object."""
        if not self.sent.strip():
            return ""  # nothing sent: the block's initial `{}` stands
        mode = "after_value" if self._held else self._mode
        suffix = ""
        if mode == "string":
            if self._escape:
                suffix += "\\"
            suffix += "0" * self._hex_left + '"'
            mode = "colon" if self._key else "after_value"
        elif mode == "number":
            suffix += "0" if self._token[-1] in "-+.eE" else ""
            mode = "after_value"
        elif mode == "literal":
            suffix += _LITERALS[self._token[0]][len(self._token) :]
            mode = "after_value"
        if mode == "colon":
            suffix += ":null"
        elif mode == "value":
            suffix += "null"
        return suffix + "".join("}" if c == "{" else "]" for c in reversed(self._stack))

    # ------------------------------------------------------------------ the state machine

    def _step(self, ch: str) -> bool:
        mode = self._mode
        if mode == "string":
            return self._string(ch)
        if mode == "number":
            if _NUMBER_PREFIX.fullmatch(self._token + ch):
                self._token += ch
                return True
            if not _NUMBER.fullmatch(self._token):
                return False
            self._mode = "after_value"  # the number ended; `ch` is what follows it
            return self._step(ch)
        if mode == "literal":
            word = _LITERALS[self._token[0]]
            if word[len(self._token)] != ch:
                return False
            self._token += ch
            if self._token == word:
                self._mode = "after_value"
            return True
        if ch in _WS:
            return True
        if mode == "start":
            if ch != "{":
                return False
            self._stack.append("{")
            self._mode = "key_or_end"
            return True
        if mode == "done":
            return False
        if mode in ("key_or_end", "key"):
            if ch == "}" and mode == "key_or_end":
                return self._pop("{")
            if ch != '"':
                return False
            self._mode, self._key = "string", True
            return True
        if mode == "colon":
            if ch != ":":
                return False
            self._mode = "value"
            return True
        if mode in ("value", "value_or_end"):
            if ch == "]" and mode == "value_or_end":
                return self._pop("[")
            return self._value(ch)
        if mode == "after_value":
            top = self._stack[-1]
            if ch == ",":
                self._mode = "key" if top == "{" else "value"
                return True
            if ch == ("}" if top == "{" else "]"):
                return self._pop(top)
            return False
        return False

    def _value(self, ch: str) -> bool:
        if ch == "{":
            self._stack.append("{")
            self._mode = "key_or_end"
        elif ch == "[":
            self._stack.append("[")
            self._mode = "value_or_end"
        elif ch == '"':
            self._mode, self._key = "string", False
        elif ch in _LITERALS:
            self._mode, self._token = "literal", ch
        elif ch == "-" or "0" <= ch <= "9":
            self._mode, self._token = "number", ch
        else:
            return False
        return True

    def _string(self, ch: str) -> bool:
        if self._hex_left:
            if ch not in _HEX:
                return False
            self._hex_left -= 1
        elif self._escape:
            if ch not in _ESCAPES:
                return False
            self._escape = False
            self._hex_left = 4 if ch == "u" else 0
        elif ch == "\\":
            self._escape = True
        elif ch == '"':
            self._mode = "colon" if self._key else "after_value"
        elif ord(ch) < 0x20:
            return False
        return True

    def _pop(self, opener: str) -> bool:
        if not self._stack or self._stack[-1] != opener:
            return False
        self._stack.pop()
        self._mode = "after_value" if self._stack else "done"
        return True
