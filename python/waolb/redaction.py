"""Credentials out of everything waolb shows or logs.

Predictor and BMC URLs come from NodeConfigs and may carry ``user:password@``; errors quote
URLs, and sometimes a response body or a header. Whatever the source did, every log line
(:mod:`waolb.logs` runs :func:`redact_value` on each event) and every document the servers
send (``/waolb/weights``) passes through here, so a credential that slipped into a message is
still not shown. The scorer also redacts at the source, where it knows what a value is.

What is replaced by ``***``: a URL's user information, the credentials of an HTTP
authorization scheme (``Basic ...``, ``Bearer ...``), and the value of a key that names a
secret (``password=...``, ``"token": "..."``, ``api_key: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

MASK: Final = "***"

# scheme://userinfo@ : the user information runs to the authority's last "@".
_URL_USERINFO: Final = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s?#@]*(?:@[^/\s?#@]*)*@", re.I)
# As headers write them (case kept, so that prose such as "basic checks" is left alone).
_AUTHORIZATION: Final = re.compile(r"\b(Basic|Bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_SECRET_KEY: Final = r"(?<![a-z0-9])(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)"
_SECRET_VALUE: Final = re.compile(rf"""({_SECRET_KEY}["']?\s*[:=]\s*["']?)[^\s"'&,;}}\]]+""", re.I)
_SECRET_NAME: Final = re.compile(rf"{_SECRET_KEY}s?$", re.I)


def redact_url(url: str) -> str:
    """``url`` without its ``user:password@``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"{MASK}@" + parts.netloc.rpartition("@")[2]))


def redact_text(text: str) -> str:
    """Free text (a message, an error, a quoted body) with every credential masked."""
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _AUTHORIZATION.sub(rf"\1\2{MASK}", text)
    return _SECRET_VALUE.sub(rf"\1{MASK}", text)


def redact_value(value: object) -> object:
    """A JSON-like value with every string redacted, and the text of every key that names a
    secret masked whole.

    Numbers, booleans and None stay as they are; any other object is shown as its redacted
    ``str()``, as a log line would show it.
    """
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {
            (redact_text(key) if isinstance(key, str) else key): (
                MASK if _names_secret(key, item) else redact_value(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return redact_text(str(value))


def _names_secret(key: object, value: object) -> bool:
    # A count of tokens is not a token: only text values are masked whole.
    return isinstance(key, str) and isinstance(value, str) and bool(_SECRET_NAME.search(key))
