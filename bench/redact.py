"""Credentials never reach a file, log or report: strip URL userinfo and credential query parameters, mask secret keys.

Applied where bench writes (manifest, samples, summary, routing, report) and where it prints (the stderr console
and error messages), so a key in a suite's `base_url` or in an upstream's error text is never recorded."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# query parameters and mapping keys that carry a credential, as a word of their own (not "max_tokens")
SECRET_NAMES = ("api_key", "apikey", "api-key", "key", "access_token", "token", "auth", "authorization",
                "password", "passwd", "pwd", "secret", "client_secret", "sig", "signature", "x-api-key",
                "x-goog-api-key", "session", "sessionid", "code")
# mapping keys whose values are credentials: these names exactly, or ending in one of SECRET_SUFFIXES
# ("max_tokens", "tokens_per_s" and "harness_s_per_token" are not)
SECRET_KEYS = {"api_key", "apikey", "api-key", "x-api-key", "password", "passwd", "secret", "client_secret", "token",
               "access_token", "auth_token", "refresh_token", "id_token", "bearer_token", "session_token",
               "authorization", "credential", "credentials", "private_key"}
SECRET_SUFFIXES = ("_api_key", "_apikey", "_password", "_secret", "_access_token", "_auth_token", "_refresh_token",
                   "_private_key")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_-]{12,}|sk_live_[A-Za-z0-9]{12,}|AIza[0-9A-Za-z_-]{20,})\b")


def redact_url(url: str) -> str:
    """The URL without user:password@ and with credential-bearing query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in SECRET_NAMES else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_PARAM = re.compile(r"([?&;](?:" + "|".join(re.escape(n) for n in SECRET_NAMES) + r")=)[^&#\s\"'<>]+", re.I)


def redact_text(text: str) -> str:
    """Every URL in free text (an error message, a log line) redacted, plus credential query parameters outside a
    full URL (a server echoing a path), bearer tokens and key-shaped strings."""
    if not text:
        return text
    out = _URL.sub(lambda m: redact_url(m.group(0)), text) if "://" in text else text
    out = _PARAM.sub(lambda m: m.group(1) + MASK, out)
    out = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", out)
    return _KEYLIKE.sub(MASK, out)


def is_secret_key(key: str) -> bool:
    """True for a mapping key that holds a credential (`api_key_env`, the name of a variable, is not one)."""
    k = key.lower()
    return k in SECRET_KEYS or k.endswith(SECRET_SUFFIXES)


def redact(value: Any) -> Any:
    """A document with every string redacted and the values of secret-named keys masked (`*_env` names kept)."""
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_key(k) and value[k] not in (None, "")
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingStream:
    """A text stream that redacts what is written through it. It looks sys.stderr up on every write, so a
    stream swapped in later (a test's capture, a redirect) is still the one written to."""

    @property
    def _stream(self) -> Any:
        import sys

        return sys.stderr

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
