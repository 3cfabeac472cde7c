"""Structured logging: structlog on top of the standard library's logging.

Going through the standard library means the Kubernetes client's and urllib3's records come out
of the same handler, in the same format, as waolb's own.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Final, Literal, TextIO

import orjson
import structlog

from waolb.redaction import redact_value

# kube-proxy's klog levels: 0-1 are the normal operational messages, 2 and up add detail.
DEBUG_VERBOSITY = 2
# Libraries log every HTTP request at debug; only very verbose runs want that.
LIBRARY_DEBUG_VERBOSITY = 6
_LIBRARY_LOGGERS = ("kubernetes", "urllib3")
# Enough for every malformed object of a large cluster; the least recent go first beyond it.
DEFAULT_ONCE_CAPACITY: Final = 4096


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger named after its module; usable before configure_logging is called."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def _json_dumps(event: object, **_: object) -> str:
    # str() for anything orjson cannot encode (exceptions, IP objects): a log line never fails.
    return orjson.dumps(event, default=str).decode()


def redact_event(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """No credential in any log line, waolb's or a library's, exceptions included."""
    return {key: redact_value(value) for key, value in event.items()}


def configure_logging(
    verbosity: int = 0,
    log_format: Literal["console", "json"] = "console",
    stream: TextIO | None = None,
) -> None:
    """Route all logging to ``stream`` (stderr) with timestamps, levels and logger names.

    Called once at start-up; calling it again replaces the handler (tests redirect the stream).
    """
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    # Tracebacks become text before redaction, so that they are redacted too.
    rendering: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info,
        redact_event,
        renderer,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: structlog.testing.capture_logs must be able to intercept any logger.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *rendering,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if verbosity >= DEBUG_VERBOSITY else logging.INFO)
    library_level = logging.DEBUG if verbosity >= LIBRARY_DEBUG_VERBOSITY else logging.WARNING
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)


class OncePerState:
    """Decides when a recurring problem is worth a log line: once per key and state.

    A key is what the problem is about (an object, a service port), a state what makes it new
    (the object's resourceVersion, the bad value): ``first(key, state)`` is True only when the
    key's state differs from the one last seen. Memory is bounded whatever the input: at most
    ``capacity`` keys are remembered, the least recently seen forgotten first, and a forgotten
    key is simply logged again. Thread-safe.
    """

    def __init__(self, capacity: int = DEFAULT_ONCE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._seen: OrderedDict[Hashable, Hashable] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: Hashable, state: Hashable = None) -> bool:
        """Whether ``key`` in ``state`` is new (log it); remembers it either way."""
        with self._lock:
            new = key not in self._seen or self._seen[key] != state
            self._seen[key] = state
            self._seen.move_to_end(key)
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return new

    def forget(self, key: Hashable) -> None:
        """The problem is gone: log it again if it comes back, even in the same state."""
        with self._lock:
            self._seen.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
