"""HTTP Range and conditional requests (RFC 9110 §13, §14), answered against a content etag.

One range per request (no ``multipart/byteranges``: no client of ours sends several). The etag
is the content digest clients pin (SHA-256, or the git blob SHA-1 of a small Hub file), never a
date or an mtime, so ``If-Range`` and ``If-None-Match`` mean "the same bytes".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from dsmirror._serve._http import Reply

__all__ = ["ByteRange", "RangeNotSatisfiable", "parse_range", "plan_response"]


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


class RangeNotSatisfiable(Exception):
    pass


_RANGE_SPEC = re.compile(r"\s*([0-9]*)\s*-\s*([0-9]*)\s*")
#: Positions past this are refused as unsatisfiable, as nginx does past off_t (no int() of a
#: thousand digits: Python refuses over 4300 of them with a ValueError).
_MAX_POSITION = 2**63 - 1


def _position(digits: str, header: str) -> int:
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(_MAX_POSITION)) or int(digits) > _MAX_POSITION:
        raise RangeNotSatisfiable(header)
    return int(digits)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Interpret a ``Range`` header for a representation of ``size`` bytes (RFC 9110 §14).

    ``None`` means "send everything with 200": no header, another unit, or several ranges
    (allowed to be ignored; no client of ours sends them). A malformed or unsatisfiable single
    range raises ``RangeNotSatisfiable`` (416) rather than being ignored, so a buggy resumer
    never appends a whole file to its partial copy; so does a position past 2**63 - 1. An empty
    file satisfies no range.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeNotSatisfiable(header)
    first, last = match.group(1), match.group(2)
    if size == 0:
        raise RangeNotSatisfiable(header)
    if first == "":
        suffix = _position(last, header)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - suffix), size)
    start = _position(first, header)
    stop = size if last == "" else _position(last, header) + 1
    if start >= size or stop <= start:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(stop, size))


def _etag_list_matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    for item in header.split(","):
        item = item.strip()
        is_weak = item.startswith("W/")
        if is_weak and not weak:
            continue
        if item.removeprefix("W/") == f'"{etag}"':
            return True
    return False


def plan_response(
    request: web.Request, *, size: int, etag: str, content_type: str, headers: Mapping[str, str]
) -> tuple[web.StreamResponse, ByteRange]:
    """Check preconditions and Range; the response (not yet prepared) and the bytes it sends.

    A failed precondition (412), a fresh client copy (304) or an unsatisfiable range (416) is
    raised as a ``Reply``.
    """
    quoted = f'"{etag}"'
    head = {**headers, "ETag": quoted, "Accept-Ranges": "bytes", "Content-Type": content_type}

    # RFC 9110 §13.2.2: If-Match, then If-None-Match, then If-Range.
    if (if_match := request.headers.get("If-Match")) and not _etag_list_matches(if_match, etag, weak=False):
        raise Reply(web.Response(status=412, headers={"ETag": quoted}))
    if (if_none := request.headers.get("If-None-Match")) and _etag_list_matches(if_none, etag, weak=True):
        raise Reply(web.Response(status=304, headers={k: v for k, v in head.items() if k != "Content-Type"}))
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != quoted:
        # A weak tag or a date never matches: we keep no Last-Modified to compare with.
        range_header = None
    try:
        rng = parse_range(range_header, size)
    except RangeNotSatisfiable:
        raise Reply(web.Response(status=416, headers={**head, "Content-Range": f"bytes */{size}"})) from None

    span = rng or ByteRange(0, size)
    resp = web.StreamResponse(status=200 if rng is None else 206, headers=head)
    if rng is not None:
        resp.headers["Content-Range"] = rng.content_range(size)
    resp.content_length = span.stop - span.start
    return resp, span
