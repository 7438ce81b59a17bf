"""Which sequence slot of the embedded engine a request runs in.

Each slot keeps the KV cache of the last prompt it ran, so a request whose prompt starts with
that prompt only prefills the new suffix (agents resend the whole conversation every turn). A
slot's cache serves only the account that computed it: reusing another account's prefix would
tell an attacker, through `cached_tokens` or through how long the prefill takes, how much of a
guessed prompt matches what someone else sent. A slot last used by another account is therefore
taken with its cache switched off (`reuse=False`), and the engine re-prefills from the start.

Pure bookkeeping, called on the event loop only; the `FairScheduler` in front guarantees that a
request asking for a slot finds one free.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(slots=True)
class Slot:
    id: int
    tenant: str | None = None  # whose prompt the slot's cache holds (None: nobody's yet)
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    used: int = 0  # when it was last taken (a counter, for least-recently-used)


@dataclass(frozen=True, slots=True)
class Placement:
    slot: int
    reuse: bool  # whether the engine may reuse the slot's cached prefix
    expected_prefix: int  # tokens of the prompt the slot's cache already holds (as far as we know)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class SlotTable:
    def __init__(self, count: int) -> None:
        self.slots = [Slot(i) for i in range(count)]
        self._clock = itertools.count(1)

    @property
    def free(self) -> int:
        return sum(not s.busy for s in self.slots)

    def take(self, tenant: str, prompt: list[int]) -> Placement:
        free = [s for s in self.slots if not s.busy]
        if not free:
            raise RuntimeError("no free slot: the scheduler admitted more requests than there are slots")
        chosen, reuse, prefix = self._choose(free, tenant, prompt)
        chosen.busy = True
        chosen.tenant = tenant
        chosen.tokens = list(prompt)
        chosen.used = next(self._clock)
        return Placement(chosen.id, reuse, prefix)

    @staticmethod
    def _choose(free: list[Slot], tenant: str, prompt: list[int]) -> tuple[Slot, bool, int]:
        # 1. The account's own slot sharing the longest prefix, if that prefix is most of what
        #    the slot holds (else taking it would throw away a cache worth more than it gives).
        own = [(common_prefix(s.tokens, prompt), s) for s in free if s.tenant == tenant and s.tokens]
        if own:
            prefix, best = max(own, key=lambda pair: (pair[0], pair[1].used))
            if prefix and prefix * 2 >= len(best.tokens):
                return best, True, prefix
        # 2. A slot nobody has used yet.
        empty = next((s for s in free if s.tenant is None), None)
        if empty is not None:
            return empty, True, 0
        # 3. The least recently used free slot: its cache is reused only if it is this account's.
        oldest = min(free, key=lambda s: s.used)
        if oldest.tenant == tenant:
            return oldest, True, common_prefix(oldest.tokens, prompt)
        return oldest, False, 0

    def release(self, slot: int, tokens: list[int] | None = None) -> None:
        """The request in `slot` is done; `tokens` is what its cache now holds, if known."""
        entry = self.slots[slot]
        entry.busy = False
        if tokens is not None:
            entry.tokens = tokens

    def forget(self, slot: int) -> None:
        """What the slot's cache holds is unknown (the request failed). It stays the same
        account's: the cache may still hold that account's tokens, so nobody else may reuse it."""
        entry = self.slots[slot]
        entry.busy = False
        entry.tokens = []
