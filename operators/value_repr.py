"""What messages may show of values: a bounded ``repr`` of untrusted ones, URLs without secrets.

A payload value can be nested a thousand levels deep or be megabytes long; Python's own ``repr``
then raises ``RecursionError`` or copies it all into the message. ``reprlib`` stops at a depth
and a length instead. A URL in an error or a log line keeps its user and host but never its
password.
"""

from __future__ import annotations

import re
import reprlib

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 80
_REPR.maxlong = 40
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6
MAX_REPR_CHARS = 200


def bounded_repr(value: object) -> str:
    """``repr(value)`` cut to a few levels of nesting and at most ``MAX_REPR_CHARS`` characters.

    Args:
        value: Anything a payload or configuration may hold.

    Returns:
        A short, single-line description; never raises.
    """
    if type(value) is int and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit integer>"  # Python refuses to print ints past 4,300 digits
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose own __repr__ fails: name its type instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_REPR_CHARS else text[: MAX_REPR_CHARS - 3] + "..."


_URL_PASSWORD = re.compile(r"(?P<head>//[^/@:\s]*:)[^/\s]*@")  # up to the last @ of the authority, as urlsplit reads it
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_key|secret_key)=)[^&;\s]*")
MASK = "***"


def masked_url(url: str) -> str:
    """The URL with its password (``user:password@``) and secret query parameters
    (``password=``, ``token=`` …) replaced by ``***``, for messages and logs.

    Args:
        url: Any connection URL, well-formed or not.

    Returns:
        The URL as it may be shown.
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", str(url))
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
