"""When background work runs: one bounded-frequency runner and one backoff for all of waolb.

:class:`BoundedFrequencyRunner` is kube-proxy's ``async.BoundedFrequencyRunner`` reduced to what
waolb needs, and serves both the sync loop and WAO scoring. It runs a function in a thread of its
own:

* when asked (:meth:`~BoundedFrequencyRunner.run`), but never sooner than ``min_interval`` after
  the previous run started, so that a burst of requests coalesces into one run;
* optionally only once requests have stopped arriving for ``settle`` seconds (a full sync asks
  about thousands of ports one after another: scoring should start after the last one);
* at least every ``max_interval`` after the previous run, asked or not (the first run must be
  asked for);
* at a time the function asks for (:meth:`~BoundedFrequencyRunner.retry_after`), for retries.

The clock is injected: tests drive :meth:`~BoundedFrequencyRunner.run_if_due` by hand with a
fake clock and never start the thread. The function's own exceptions are logged and counted
and the runner goes on; anything that still ends the thread is reported through ``on_crash``
(the proxy's health check turns unhealthy), never silently.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from waolb import logs

log = logs.get_logger(__name__)

Clock = Callable[[], float]

# threading's waits refuse timeouts above this; a longer wait is cut to it and taken again.
_LONGEST_WAIT: Final = min(threading.TIMEOUT_MAX, 86400.0)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial`` growing by ``factor`` up to ``cap`` seconds, each delay
    shortened at random by up to ``jitter`` of itself so that many clients spread out."""

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``attempt`` (0 for the first) of a run of failures."""
        # The exponent is clamped only so that long outages cannot overflow the float.
        full = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return full * (1.0 - self.jitter * (rng or random).random())


class BoundedFrequencyRunner:
    """Runs ``work`` in its own thread at a bounded frequency (see the module docstring).

    ``work`` is never run twice at once, and runs in this runner's thread once started (or in
    the caller's, through :meth:`run_if_due`).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], object],
        *,
        min_interval: float = 0.0,
        max_interval: float = math.inf,
        settle: float = 0.0,
        clock: Clock = time.monotonic,
        on_error: Callable[[BaseException], None] | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not 0 <= min_interval <= max_interval or settle < 0:
            raise ValueError(
                f"{name}: need 0 <= min_interval <= max_interval and settle >= 0, got "
                f"{min_interval}, {max_interval}, {settle}"
            )
        self.name = name
        self._work = work
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._settle = settle
        self._clock = clock
        self._on_error = on_error
        self._on_crash = on_crash
        self._condition = threading.Condition()
        self._requested_at: float | None = None  # the last unserved request
        self._retry_at: float | None = None
        self._last_run_at: float | None = None  # None: never ran, so no bound applies yet
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- requests (any thread) ----

    def run(self) -> None:
        """Ask for a run as soon as the bounds allow."""
        with self._condition:
            self._requested_at = self._clock()
            self._condition.notify()

    def retry_after(self, delay: float) -> None:
        """Ask for a run no later than ``delay`` seconds from now (still after min_interval)."""
        with self._condition:
            at = self._clock() + max(0.0, delay)
            self._retry_at = at if self._retry_at is None else min(self._retry_at, at)
            self._condition.notify()

    # ---- scheduling ----

    def next_run_at(self) -> float:
        """When the next run is due, on the runner's clock."""
        with self._condition:
            return self._next_run_at()

    def _next_run_at(self) -> float:
        """math.inf while nothing is asked for and the periodic bound has no start yet."""
        due = math.inf if self._last_run_at is None else self._last_run_at + self._max_interval
        if self._retry_at is not None:
            due = min(due, self._retry_at)
        if self._requested_at is not None:
            due = min(due, self._requested_at + self._settle)
        if self._last_run_at is not None:
            due = max(due, self._last_run_at + self._min_interval)
        return due

    def run_if_due(self) -> bool:
        """Run ``work`` now, in the caller's thread, if a run is due; True if it ran."""
        with self._condition:
            if self._clock() < self._next_run_at():
                return False
            self._begin_run()
        self._call_work()
        return True

    def _begin_run(self) -> None:
        """Mark a run as started (lock held): requests made before now are served by it."""
        self._last_run_at = self._clock()
        self._requested_at = None
        self._retry_at = None

    def _call_work(self) -> None:
        try:
            self._work()
        except Exception as error:
            log.exception("background work failed; it runs again when next due", runner=self.name)
            if self._on_error is not None:
                self._on_error(error)

    # ---- the thread ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after the run in progress, if any."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._stopping:
                        delay = self._next_run_at() - self._clock()
                        if delay <= 0:
                            break
                        self._condition.wait(min(delay, _LONGEST_WAIT))
                    if self._stopping:
                        return
                    self._begin_run()
                self._call_work()
        except BaseException as crash:
            log.critical("background thread died", runner=self.name, error=repr(crash))
            if self._on_crash is not None:
                self._on_crash(crash)
