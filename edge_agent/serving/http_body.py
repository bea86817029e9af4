"""A request's body off the socket: by Content-Length or chunked, checked against the limits before any of it is read.

Why chunked: an HTTP/1.1 server must take it (RFC 9112 §6.1, §7.1); requests and httpx send it for a generator
body and curl for `-H 'Transfer-Encoding: chunked'`, and those clients got 411. A request with both framings (or two
Content-Lengths) is refused: read by one, the rest of the bytes were parsed as the next request (request smuggling).
A body that ends early (the client went away) is never served: a cut JSON or image could still parse.
Why gzip/deflate: tritonclient's `request_compression_algorithm` sends them (Triton takes both), and such clients got
400; a body is inflated up to the same limit as a plain one, so a small bomb cannot inflate to gigabytes.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO, Mapping

from .errors import BadRequest, HttpError, LengthRequired, NotSupported, TooLarge, UnsupportedMediaType
from .protocols.kserve_v2 import HEADER_LENGTH
_LINE = 4096  # a chunk-size line (with extensions) or a trailer line
_TRAILERS = 64
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate: zlib format


class ClientGone(Exception):
    """The connection ended before the whole body arrived: there is no one to answer."""


def refusal(headers: Mapping[str, str], limit: int, json_limit: int) -> HttpError | None:
    """Why a body will not be read, from the headers alone (so it is also the answer instead of 100 Continue)."""
    encoding = _encoding(headers)
    if encoding != "identity" and encoding not in _WBITS:
        return UnsupportedMediaType(f"content coding {encoding!r} is not supported (send gzip, deflate or identity)")
    coding, length_text = headers.get("Transfer-Encoding"), headers.get("Content-Length")
    if coding is not None:
        if coding.strip().lower() != "chunked":
            return NotSupported(f"transfer coding {coding!r} is not supported (send chunked or Content-Length)")
        if length_text is not None:
            return BadRequest("both Transfer-Encoding and Content-Length: the body's end is ambiguous")
    elif length_text is None:
        return LengthRequired("a POST needs Content-Length (or Transfer-Encoding: chunked)")
    else:
        all_lengths = headers.get_all("Content-Length") if hasattr(headers, "get_all") else [length_text]
        length = _length(length_text)
        if length is None or len(all_lengths or []) > 1:
            return BadRequest(f"bad Content-Length {length_text!r}")
        if length > limit:
            return TooLarge(f"body of {length} bytes is over this endpoint's {limit}-byte limit")
    header_len = headers.get(HEADER_LENGTH)
    if header_len is not None and header_len.isdigit() and int(header_len) > json_limit:
        return TooLarge(f"JSON header of {header_len} bytes is over the {json_limit}-byte limit")
    return None


def read_body(rfile: BinaryIO, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body of a request `refusal` let through; TooLarge/BadRequest for a bad chunked one, ClientGone."""
    if headers.get("Transfer-Encoding") is not None:
        body = _read_chunked(rfile, limit)
    else:
        length = int(headers["Content-Length"])
        body = rfile.read(length)
        if len(body) < length:
            raise ClientGone(f"{len(body)} of {length} bytes")
    encoding = _encoding(headers)
    return body if encoding == "identity" else _inflate(body, encoding, limit)


def _encoding(headers: Mapping[str, str]) -> str:
    return (headers.get("Content-Encoding") or "identity").strip().lower()


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip/deflate body, inflated to at most `limit` bytes (413 past it, before inflating the rest)."""
    z = zlib.decompressobj(_WBITS[encoding])
    try:
        out = z.decompress(body, limit + 1)
        if len(out) > limit:
            raise TooLarge(f"{encoding} body inflates past this endpoint's {limit}-byte limit")
        if not z.eof or z.unused_data:
            raise BadRequest(f"{encoding} body is cut short or has bytes after its end")
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding}: {exc}") from None
    return out


def _length(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _read_chunked(rfile: BinaryIO, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        line = _line(rfile)
        token = line.split(b";", 1)[0].strip()
        try:
            n = int(token, 16)
            if n < 0 or not token.isalnum():
                raise ValueError
        except ValueError:
            raise BadRequest(f"bad chunk size {token[:40]!r}") from None
        if n == 0:
            break
        size += n
        if size > limit:
            raise TooLarge(f"chunked body over this endpoint's {limit}-byte limit")
        data = rfile.read(n)
        if len(data) < n:
            raise ClientGone(f"chunk of {n} bytes cut at {len(data)}")
        parts.append(data)
        if _line(rfile).strip():
            raise BadRequest("a chunk is longer than its size says")
    for _ in range(_TRAILERS):  # trailer fields, then the empty line that ends the body
        if not _line(rfile).strip():
            return b"".join(parts)
    raise BadRequest(f"more than {_TRAILERS} trailer lines")


def _line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(_LINE + 1)
    if not line.endswith(b"\n"):
        if len(line) > _LINE:
            raise BadRequest("chunked body: a line over 4096 bytes")
        raise ClientGone("chunked body cut short")
    return line
