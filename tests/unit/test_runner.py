"""The bounded-frequency runner and the backoff, on a fake clock (and once in its thread)."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netns import HUNG_AFTER
from waolb.runner import Backoff, BoundedFrequencyRunner


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Work:
    def __init__(self, clock: FakeClock, fail_with: BaseException | None = None) -> None:
        self.clock = clock
        self.runs: list[float] = []
        self.fail_with = fail_with

    def __call__(self) -> None:
        self.runs.append(self.clock.now)
        if self.fail_with is not None:
            raise self.fail_with


def runner(clock: FakeClock, work: Work, **bounds: float) -> BoundedFrequencyRunner:
    return BoundedFrequencyRunner("test", work, clock=clock, **bounds)


def test_nothing_runs_until_asked_then_at_most_every_min_interval() -> None:
    clock = FakeClock()
    work = Work(clock)
    r = runner(clock, work, min_interval=1.0)
    assert not r.run_if_due()
    r.run()
    assert r.run_if_due()
    r.run()
    r.run()  # coalesces with the one before
    clock.now += 0.5
    assert not r.run_if_due()
    assert r.next_run_at() == 1001.0
    clock.now += 0.5
    assert r.run_if_due()
    assert not r.run_if_due()
    assert work.runs == [1000.0, 1001.0]


def test_max_interval_runs_unasked_after_the_first_run() -> None:
    clock = FakeClock()
    work = Work(clock)
    r = runner(clock, work, min_interval=1.0, max_interval=30.0)
    r.run()
    assert r.run_if_due()
    clock.now += 29.9
    assert not r.run_if_due()
    clock.now += 0.1
    assert r.run_if_due()
    assert work.runs == [1000.0, 1030.0]


def test_settle_waits_for_requests_to_stop_arriving() -> None:
    clock = FakeClock()
    work = Work(clock)
    r = runner(clock, work, settle=0.2)
    for _ in range(5):
        r.run()
        clock.now += 0.1
        assert not r.run_if_due()
    clock.now += 0.1
    assert r.run_if_due()
    assert work.runs == [pytest.approx(1000.6)]


def test_retry_after_runs_early_but_not_before_min_interval() -> None:
    clock = FakeClock()
    work = Work(clock)
    r = runner(clock, work, min_interval=2.0, max_interval=60.0)
    r.run()
    r.run_if_due()
    r.retry_after(0.5)
    assert r.next_run_at() == 1002.0
    r.retry_after(10.0)  # the earlier retry stands
    clock.now += 2.0
    assert r.run_if_due()
    r.retry_after(10.0)
    assert r.next_run_at() == 1012.0


def test_a_failing_run_is_reported_and_the_runner_goes_on() -> None:
    clock = FakeClock()
    errors: list[BaseException] = []
    work = Work(clock, fail_with=RuntimeError("boom"))
    r = BoundedFrequencyRunner("test", work, clock=clock, on_error=errors.append)
    r.run()
    assert r.run_if_due()
    r.run()
    assert r.run_if_due()
    assert [str(e) for e in errors] == ["boom", "boom"]


@pytest.mark.parametrize(
    "bounds",
    [{"min_interval": -1.0}, {"min_interval": 2.0, "max_interval": 1.0}, {"settle": -0.1}],
)
def test_impossible_bounds_are_refused(bounds: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="test: need"):
        runner(FakeClock(), Work(FakeClock()), **bounds)


def test_the_thread_runs_when_asked_and_stops() -> None:
    ran = threading.Event()
    r = BoundedFrequencyRunner("test", ran.set, max_interval=1e12)  # a wait past TIMEOUT_MAX
    r.start()
    try:
        assert r.alive
        r.run()
        assert ran.wait(HUNG_AFTER)
    finally:
        r.stop()
    assert not r.alive


def test_a_dying_thread_is_reported() -> None:
    crashed: list[BaseException] = []
    died = threading.Event()

    def crash(error: BaseException) -> None:
        crashed.append(error)
        died.set()

    def fatal() -> None:
        raise SystemExit(3)  # not an Exception: the runner cannot go on

    r = BoundedFrequencyRunner("test", fatal, on_crash=crash)
    r.start()
    r.run()
    assert died.wait(HUNG_AFTER)
    r.stop()
    assert not r.alive
    assert isinstance(crashed[0], SystemExit)


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    initial=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=10, max_value=600),
    seed=st.integers(),
)
def test_backoff_grows_to_its_cap_and_jitters_down_only(
    attempt: int, initial: float, cap: float, seed: int
) -> None:
    backoff = Backoff(initial=initial, cap=cap)
    full = min(cap, initial * 2 ** min(attempt, 64))
    delay = backoff.delay(attempt, random.Random(seed))
    assert full * (1 - backoff.jitter) <= delay <= full


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    backoff = Backoff()
    rng = random.Random(7)
    for attempt, full in enumerate([0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]):
        delay = backoff.delay(attempt, rng)
        assert full / 2 <= delay <= full
    assert backoff.delay(10_000, rng) <= 30.0
