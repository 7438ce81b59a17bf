"""Slot choice for the embedded engine: reuse a cached prefix, never another account's."""

import pytest

from longcat.engines.slots import SlotTable, common_prefix


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_a_conversation_goes_back_to_the_slot_holding_its_prefix():
    table = SlotTable(3)
    first = table.take("a", [1, 2, 3])
    other = table.take("a", [9, 9, 9])
    table.release(first.slot)
    table.release(other.slot)
    again = table.take("a", [1, 2, 3, 4, 5])
    assert again.slot == first.slot and again.reuse and again.expected_prefix == 3


def test_another_accounts_cache_is_never_reused():
    table = SlotTable(1)
    table.release(table.take("a", [1, 2, 3]).slot)
    place = table.take("b", [1, 2, 3, 4])
    assert place.slot == 0 and place.reuse is False and place.expected_prefix == 0


def test_empty_slots_are_taken_before_another_accounts_cache_is_overwritten():
    table = SlotTable(2)
    a = table.take("a", [1, 2, 3])
    table.release(a.slot)
    b = table.take("b", [1, 2, 3])
    assert b.slot != a.slot and b.reuse  # the empty one, not a's
    table.release(b.slot)
    # All slots used: b's new conversation takes its own least recently used slot before a's?
    # It takes the least recently used one, a's, and must not reuse it.
    c = table.take("b", [7, 7])
    assert c.slot == a.slot and c.reuse is False


def test_a_small_overlap_does_not_throw_away_a_long_cache_when_another_slot_is_free():
    table = SlotTable(2)
    long = table.take("a", list(range(100)))
    table.release(long.slot)
    place = table.take("a", [0, 1, 2, 50])  # shares 3 of 100 tokens
    assert place.slot != long.slot


def test_a_failed_request_leaves_its_slot_to_its_own_account():
    table = SlotTable(1)
    table.forget(table.take("a", [1, 2, 3]).slot)
    place = table.take("b", [1, 2, 3])
    assert place.reuse is False


def test_more_requests_than_slots_is_a_bug_not_a_wait():
    table = SlotTable(1)
    table.take("a", [1])
    with pytest.raises(RuntimeError):
        table.take("b", [2])
    assert table.free == 0
