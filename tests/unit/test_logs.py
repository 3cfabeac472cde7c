"""logs.OncePerState: the one "log once per object state" memory, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waolb.logs import OncePerState


def test_once_per_key_and_state() -> None:
    once = OncePerState()
    assert once.first(("Service", "default", "web"), "7")
    assert not once.first(("Service", "default", "web"), "7")
    # A new state of the same key is news; going back to an older one too.
    assert once.first(("Service", "default", "web"), "8")
    assert once.first(("Service", "default", "web"), "7")
    assert once.first(("Service", "default", "db"), "7")


def test_a_forgotten_key_is_logged_again() -> None:
    once = OncePerState()
    assert once.first("port")
    assert not once.first("port")
    once.forget("port")
    once.forget("never seen")
    assert once.first("port")


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=300))
def test_memory_is_bounded_and_recent_keys_are_kept(events: list[tuple[int, int]]) -> None:
    capacity = 8
    once = OncePerState(capacity)
    for key, state in events:
        once.first(key, state)
        assert len(once) <= capacity
    # The most recently seen key, in its last state, is never news.
    if events:
        key, state = events[-1]
        assert not once.first(key, state)
