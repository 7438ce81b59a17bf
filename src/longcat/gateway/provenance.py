"""Which replayed reasoning is the model's own: one policy for every wire format.

A model reads replayed reasoning as its own earlier thoughts, so reasoning a client wrote itself
would be a way to steer it. The rule: an engine is given reasoning only when the platform knows a
model wrote it for this account. Each format proves it its own way (`gateway.signing`):
- Anthropic: thinking blocks carry the platform's signature (a bad one is refused with a 400, as
  Anthropic does);
- Responses: reasoning items carry `encrypted_content`, sealed for the account;
- Chat: `reasoning_content` has room for no proof, so the platform remembers a keyed digest of
  the reasoning it handed to each account (for a day; in Redis when replicas share one) and
  recognises it when it comes back.
Reasoning proven none of these ways, in any format, is dropped before the engine sees it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from typing import Any

from longcat.canonical import ChatRequest, ThinkingBlock, invalid

MEMORY_SECONDS = 86_400
MEMORY_ENTRIES = 100_000  # in process: ~10 MB of digests at most


class ReasoningMemory:
    """Keyed digests of (account, reasoning text) the platform handed out."""

    def __init__(self, secret: bytes, redis: Any = None, prefix: str = "lc:") -> None:
        self._key = hmac.new(secret, b"longcat reasoning memory v1", hashlib.sha256).digest()
        self._redis = redis
        self._prefix = prefix + "rp:"
        self._local: OrderedDict[bytes, None] = OrderedDict()

    def _digest(self, account_id: int, text: str) -> bytes:
        message = f"{account_id}\x00".encode() + text.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()[:16]

    async def remember(self, account_id: int, text: str) -> None:
        if not text:
            return
        digest = self._digest(account_id, text)
        if self._redis is not None:
            await self._redis.set(self._prefix + digest.hex(), "1", ex=MEMORY_SECONDS)
            return
        self._local[digest] = None
        self._local.move_to_end(digest)
        while len(self._local) > MEMORY_ENTRIES:
            self._local.popitem(last=False)

    async def known(self, account_id: int, texts: list[str]) -> list[bool]:
        digests = [self._digest(account_id, t) for t in texts]
        if self._redis is not None:
            found = await self._redis.mget([self._prefix + d.hex() for d in digests])
            return [v is not None for v in found]
        return [d in self._local for d in digests]


async def keep_verified_reasoning(request: ChatRequest, account_id: int, memory: ReasoningMemory) -> None:
    """Mark the reasoning this account was handed as verified, and drop all other reasoning
    (messages left empty go with it)."""
    pending = [
        b
        for m in request.messages
        for b in m.content
        if isinstance(b, ThinkingBlock) and not b.verified and not b.redacted and b.text
    ]
    if pending:
        for block, known in zip(pending, await memory.known(account_id, [b.text for b in pending]), strict=True):
            block.verified = known
    for message in request.messages:
        message.content = [b for b in message.content if not isinstance(b, ThinkingBlock) or b.verified]
    request.messages = [m for m in request.messages if m.content]
    if not request.messages:
        raise invalid("The conversation holds nothing but reasoning this platform cannot verify; add a message.", param="messages")
