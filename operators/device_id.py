"""The device id rule: what every bridge, the MQTT topic layout and the decoder accept as a device id.

A device id travels as a Kafka record key, as one level of an MQTT topic, in HTTP paths, file
names, PostgreSQL keys and MongoDB documents, so it is held to one rule everywhere:

- 1 to :data:`MAX_DEVICE_ID_CHARS` (128) characters;
- ASCII letters, digits and ``. _ : @ -`` only, starting with a letter or a digit.

The character set is what the shipped specs, the simulator (``dev-00042``, hub ``nohub``),
the TCP header ids (hex) and the docs use. It leaves out everything that could act as a path
or an escape on its way: ``/`` and ``\\`` (path separators, MQTT levels), ``%`` (percent
encodings of those), ``.`` and ``..`` as a whole id (path segments), control characters,
spaces, quotes, ``+`` and ``#`` (MQTT wildcards). :func:`device_id_problem` names the first
thing that breaks the rule, precisely enough for a dead letter.
"""

from __future__ import annotations

import re

from operators.value_repr import bounded_repr

MAX_DEVICE_ID_CHARS = 128
ALLOWED_PUNCTUATION = "._:@-"
ALLOWED_DESCRIPTION = "letters, digits and . _ : @ -"
# The reason code of a dead letter whose device (or hub) id breaks the rule.
INVALID_DEVICE_ID = "invalid_device_id"

# The whole rule as one regular expression, for schemas (the HTTP bridge's OpenAPI "pattern");
# device_id_problem says why an id does not match it.
DEVICE_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{MAX_DEVICE_ID_CHARS - 1}}}$"

_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")  # with fullmatch, after the length check
_PATH_SEPARATORS = "/\\"
_PERCENT_ENCODING = re.compile(r"%[0-9A-Fa-f]{2}")
_ENCODED_MEANING = {"2F": "'/'", "5C": "'\\'", "2E": "'.'", "25": "'%'", "00": "NUL"}


class InvalidDeviceId(ValueError):
    """A device id breaks the device id rule.

    Attributes:
        code: ``invalid_device_id`` (the dead-letter reason code).
        reason: Precise, human-readable reason.
    """

    code = INVALID_DEVICE_ID

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def device_id_problem(value: object, name: str = "device id") -> str | None:
    """Says why ``value`` is not a valid device id, or None when it is one.

    Args:
        value: The candidate id, as received (any type).
        name: What the id is called in the reason, e.g. ``hub_id`` or ``path device_id``.

    Returns:
        None for a valid id, else one line naming the first thing that breaks the rule and
        where, e.g. ``device id '../etc' has the path separator '/' at offset 2``.
    """
    if not isinstance(value, str):
        return f"{name} is {type(value).__name__} {bounded_repr(value)}, not a string"
    if not value:
        return f"{name} is empty"
    if len(value) > MAX_DEVICE_ID_CHARS:
        # No scan of the rest: the id may be megabytes long, and its length is the reason.
        return f"{name} of {len(value)} characters is longer than the limit of {MAX_DEVICE_ID_CHARS} ({bounded_repr(value)})"
    if _VALID.fullmatch(value):
        return None
    shown = bounded_repr(value)
    for offset, char in enumerate(value):
        if ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            return f"{name} {shown} has the control character U+{ord(char):04X} at offset {offset}"
    for offset, char in enumerate(value):
        if char in _PATH_SEPARATORS:
            return f"{name} {shown} has the path separator {char!r} at offset {offset}"
    encoded = _PERCENT_ENCODING.search(value)
    if encoded:
        meaning = _ENCODED_MEANING.get(encoded.group()[1:].upper())
        what = f"the percent-encoding {encoded.group()!r}" + (f" (an encoded {meaning})" if meaning else "")
        return f"{name} {shown} has {what} at offset {encoded.start()}"
    if value in (".", ".."):
        return f"{name} {shown} is a path segment ('.' or '..')"
    for offset, char in enumerate(value):
        if not (char.isascii() and (char.isalnum() or char in ALLOWED_PUNCTUATION)):
            return f"{name} {shown} has {char!r} (U+{ord(char):04X}) at offset {offset}: allowed are {ALLOWED_DESCRIPTION}"
    return f"{name} {shown} starts with {value[0]!r}: it must start with a letter or a digit"


def check_device_id(value: object, name: str = "device id") -> str:
    """Returns ``value`` when it is a valid device id.

    Args:
        value: The candidate id.
        name: What the id is called in the reason.

    Raises:
        InvalidDeviceId: with the reason of :func:`device_id_problem`.
    """
    problem = device_id_problem(value, name)
    if problem is not None:
        raise InvalidDeviceId(problem)
    return value
