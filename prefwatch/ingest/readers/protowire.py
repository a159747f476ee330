"""The protobuf wire format, read by hand: the few helpers the TensorBoard and W&B readers share.

A message is a run of fields, each a varint key (field number << 3 | wire type) and a value: a varint
(wire type 0), 8 or 4 fixed bytes (1, 5) or a varint length and that many bytes (2). Nothing here
allocates more than the message it reads: a length past the message's end is an error, not a read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

U64 = (1 << 64) - 1


def fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: varints as ints, fixed-width fields
    as their offset, length-delimited ones as a (start, end) span. Raises ValueError when malformed."""
    at = start
    while at < end:
        key, at = varint(data, at, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(data, at, end)
            yield number, wire, value
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if at + width > end:
                raise ValueError("truncated field")
            yield number, wire, at
            at += width
        elif wire == 2:
            length, at = varint(data, at, end)
            if at + length > end:
                raise ValueError("truncated field")
            yield number, wire, (at, at + length)
            at += length
        else:
            raise ValueError(f"wire type {wire}")


def varint(data: bytes, at: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``at`` and the offset after it. Raises ValueError when malformed."""
    value = shift = 0
    while at < end:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & U64, at  # a tenth byte may carry bits past 64: protobuf drops them
        shift += 7
        if shift > 63:
            break
    raise ValueError("bad varint")


def skip(data: bytes, at: int, end: int, wire: int) -> int:
    """The offset after a field's value of wire type ``wire`` starting at ``at`` (what ``fields``
    steps over). Raises ValueError when malformed."""
    if wire == 0:
        return varint(data, at, end)[1]
    if wire == 1 or wire == 5:
        at += 8 if wire == 1 else 4
    elif wire == 2:
        length, at = varint(data, at, end)
        at += length
    else:
        raise ValueError(f"wire type {wire}")
    if at > end:
        raise ValueError("truncated field")
    return at


def signed(value: int, bits: int = 64) -> int:
    """A varint read as protobuf's ``int64`` (or ``int32``: its low ``bits``), two's complement."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def text(data: bytes, span: tuple[int, int]) -> str:
    """A ``string`` field. Raises ValueError (UnicodeDecodeError) where it is not UTF-8, as protobuf does."""
    return data[span[0] : span[1]].decode("utf-8")
