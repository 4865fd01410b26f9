"""Binary payloads written as hex text, in the notations devices' documentation and gateways use.

Accepted: ``00FD3C``, ``0x00FD3C``, ``00 FD 3C``, ``0x00 0xFD 0x3C``, ``00:FD:3C``, ``00-FD-3C``,
``0x00, 0xFD, 0x3C``, any case, with whitespace around and line ends. Separators (whitespace,
``:``, ``-``, ``,``) may only stand between whole bytes; each group may carry its own ``0x``.
"""

from __future__ import annotations

import re

from operators.value_repr import bounded_repr

_GROUPS = re.compile(r"[\s:,\-]+")
_DIGITS = frozenset("0123456789abcdefABCDEF")


class HexTextError(ValueError):
    """Text that is not hex in any accepted notation; the message says where and why."""


def _hex_groups(text: str) -> list[str]:
    """The groups of hex digits between separators, ``0x`` prefixes removed.

    Raises:
        HexTextError: a character that is neither, named with its position among the hex digits.
    """
    bodies = []
    position = 0
    for group in _GROUPS.split(text.strip()):
        body = group[2:] if group[:2] in ("0x", "0X") else group
        for char in body:
            if char not in _DIGITS:
                raise HexTextError(f"payload is not hex: {bounded_repr(char)} at hex digit {position}")
            position += 1
        if body:
            bodies.append(body)
    return bodies


def parse_hex_text(text: str) -> bytes:
    """Hex text -> bytes.

    Args:
        text: The hex text.

    Returns:
        The bytes it writes.

    Raises:
        HexTextError: a character that is not a hex digit or separator (named, with its position
            among the hex digits), an odd number of digits, or a separator inside a byte.
    """
    bodies = _hex_groups(text)
    count = sum(len(body) for body in bodies)
    if count % 2:
        raise HexTextError(f"hex text has an odd number of digits ({count})")
    if any(len(body) % 2 for body in bodies):
        raise HexTextError("hex digits must come in pairs; separators may only stand between whole bytes")
    return bytes.fromhex("".join(bodies))


def looks_like_hex_text(payload: bytes) -> bool:
    """Whether a payload of unknown format is written as hex text: only hex digits, separators
    and ``0x`` prefixes, an even number of digits, at least two. (Digits paired across a separator
    still count: :func:`parse_hex_text` then says what is wrong with them.)"""
    try:
        count = sum(len(body) for body in _hex_groups(payload.decode("ascii")))
    except (UnicodeDecodeError, HexTextError):
        return False
    return count > 0 and count % 2 == 0
