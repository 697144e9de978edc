"""Secrets out of everything a person or a file sees.

Camera URLs carry passwords (``rtsp://user:secret@cam/stream``). Every
message, log line, report field, manifest and metric label shows a URL in
its display form, ``rtsp://***@cam/stream``: ``display_url`` for a URL,
``scrub`` for any text (an error from PyAV quotes the URL it was given).

The user info is everything between ``//`` and the last ``@`` before the
next blank or quote, so passwords holding ``/``, ``@`` or ``:`` (typed
unescaped, as people do) are masked whole. A path that itself holds an
``@`` is masked too: hiding too much of a URL is the safe side.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote

_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"<>`]*)@")


def display_url(url: str) -> str:
    """``url`` with its user info (name and password) replaced by ``***``."""
    return _URL.sub(r"\g<scheme>***@", url)


def secrets(url: str) -> list[str]:
    """What in ``url`` may be user info or a password, longest first: the text before
    each ``@`` after the scheme, and its part after the first ``:`` (an unescaped
    ``@`` in a password makes the split ambiguous, so every reading counts)."""
    match = _URL.search(url)
    if not match:
        return []
    info = match.group("userinfo")
    found: set[str] = set()
    for at in [i for i, c in enumerate(info) if c == "@"] + [len(info)]:
        prefix = info[:at]
        password = prefix.partition(":")[2]
        found.update(p for p in (prefix, password) if len(p) >= 4)
    forms = {form for s in found for form in (s, unquote(s), quote(s, safe=""))}
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, *urls: str) -> str:
    """``text`` with every URL's user info masked, and the user info and password of
    ``urls`` (the ones the run was given) masked wherever they appear on their own,
    as written, percent-decoded or percent-encoded."""
    for url in urls:
        text = text.replace(url, display_url(url))
        for secret in secrets(url):
            text = text.replace(secret, "***")
    return _URL.sub(r"\g<scheme>***@", text)


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs every record's message (install it on handlers)."""

    def __init__(self, *urls: str) -> None:
        super().__init__()
        self.urls = list(urls)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message, *self.urls)
        if clean != message:
            record.msg, record.args = clean, None
        return True
