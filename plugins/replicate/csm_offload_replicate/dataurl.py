"""`data:` URLs (RFC 2397), as Replicate (and Cog's own server, without an upload URL) return a
file output inline: `data:application/json;base64,eyJzY2hlbWEiOjF9`.

Decoding is bounded before any byte is decoded, and strict: anything but a well-formed
`data:` URL is a `ValueError` that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

import attrs

PREFIX = "data:"


@attrs.frozen
class DataUrl:
    media_type: str
    data: bytes


def is_data_url(text: str) -> bool:
    return text[: len(PREFIX)].lower() == PREFIX


def encode(data: bytes, media_type: str = "application/json") -> str:
    return f"{PREFIX}{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def decode(url: str, max_bytes: int) -> DataUrl:
    """The bytes of a `data:` URL of at most `max_bytes` decoded bytes."""
    if not is_data_url(url):
        raise ValueError("not a data: URL")
    head, comma, payload = url[len(PREFIX) :].partition(",")
    if not comma:
        raise ValueError("a data: URL needs a comma before its data")
    params = [part.strip() for part in head.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    media_type = params[0] or "text/plain"
    # Base64 is 4 characters per 3 bytes; percent-encoding at most 3 characters per byte, at
    # least 1: either way an over-long payload is refused before it is decoded.
    if is_base64 and len(payload) > 4 * ((max_bytes + 2) // 3):
        raise ValueError(f"a data: URL over {max_bytes} bytes")
    if is_base64:
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a data: URL whose data is not valid base64") from None
    else:
        if len(payload) > 3 * max_bytes:
            raise ValueError(f"a data: URL over {max_bytes} bytes")
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ValueError(f"a data: URL over {max_bytes} bytes")
    return DataUrl(media_type.lower(), data)
