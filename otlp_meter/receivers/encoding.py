"""Request bodies' ``Content-Encoding``: gzip, deflate/zlib and zstd, as the Collector's HTTP
receivers take them, never holding more than the body limit and in time linear in the body.

* ``gzip`` (and ``x-gzip``): one member or several one after another (at most :data:`MAX_MEMBERS`:
  no client sends more; each costs a fresh inflater, so a body of thousands of empty members is
  refused rather than paid for).
* ``deflate`` and ``zlib``: the zlib format (RFC 1950), which is what both names carry in HTTP.
* ``zstd``: one frame or several.

Inflating stops one byte past ``limit`` (413). The input is fed in slices, so what is left of a
long body is never copied once per member. A large body is decompressed on a thread
(:func:`decompress_body`), so one upload does not hold up every other request on the loop.
"""

from __future__ import annotations

import asyncio
import io
import zlib

import zstandard

from otlp_meter.errors import DecodeError, PayloadTooLargeError, UnsupportedMediaTypeError

SUPPORTED = ("gzip", "zstd", "deflate", "zlib")
MAX_MEMBERS = 1024
"""gzip members (or zlib streams) in one body; more is refused as malformed."""
OFF_LOOP_BYTES = 256 * 1024
"""Compressed bodies from this size on are decompressed on a thread."""
_STEP = 64 * 1024  # compressed bytes fed to an inflater at a time
_ZSTD = zstandard.ZstdDecompressor()


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` without ever holding more than ``limit`` bytes of output."""
    encoding = _name(encoding)
    if encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, encoding, limit)
    if encoding in ("deflate", "zlib"):
        return _inflate(body, zlib.MAX_WBITS, encoding, limit)
    if encoding == "zstd":
        return _unzstd(body, limit)
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Encoding {encoding!r} (use {', '.join(SUPPORTED)}, or none)"
    )


async def decompress_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """:func:`decompress`, on a thread for a large compressed body (zlib and zstd let go of the
    GIL while they work: the loop keeps serving)."""
    if len(body) < OFF_LOOP_BYTES or _name(encoding) == "identity":
        return decompress(body, encoding, limit)
    return await asyncio.to_thread(decompress, body, encoding, limit)


def _name(encoding: str | None) -> str:
    """The header's value as compared: lower case, none or empty being ``identity``."""
    return (encoding or "").strip().lower() or "identity"


def _inflate(body: bytes, wbits: int, encoding: str, limit: int) -> bytes:
    view = memoryview(body)
    out: list[bytes] = []
    size = pos = members = 0
    try:
        while pos < len(view):
            members += 1
            if members > MAX_MEMBERS:
                raise DecodeError(f"more than {MAX_MEMBERS} {encoding} members in one body")
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof:
                if pos >= len(view):
                    raise DecodeError(f"truncated {encoding} body")
                piece = view[pos : pos + _STEP]
                chunk = inflater.decompress(piece, limit - size + 1)
                size += len(chunk)
                if size > limit or inflater.unconsumed_tail:
                    raise PayloadTooLargeError(f"decompressed body exceeds {limit} bytes")
                out.append(chunk)
                pos += len(piece) - len(inflater.unused_data)  # past this member's end, if it ended
    except zlib.error as exc:
        raise DecodeError(f"invalid {encoding} body: {exc}") from exc
    return b"".join(out)


def _unzstd(body: bytes, limit: int) -> bytes:
    """Read at most ``limit`` + 1 bytes out of every frame (the bomb guard), then check that no frame
    was cut short: the reader takes a truncated frame's beginning for all of it."""
    out: list[bytes] = []
    size = 0
    try:
        with _ZSTD.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            while chunk := reader.read(min(_STEP, limit + 1 - size)):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"decompressed body exceeds {limit} bytes")
                out.append(chunk)
        rest, frames = body, 0
        while rest:  # the output is known to fit now: each frame is inflated again, whole
            frames += 1
            if frames > MAX_MEMBERS:
                raise DecodeError(f"more than {MAX_MEMBERS} zstd frames in one body")
            frame = _ZSTD.decompressobj()
            frame.decompress(rest)
            if not frame.eof:
                raise DecodeError("truncated zstd body")
            rest = frame.unused_data
    except zstandard.ZstdError as exc:
        raise DecodeError(f"invalid zstd body: {exc}") from exc
    return b"".join(out)
