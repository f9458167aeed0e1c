"""The purge marks: which pages of a region were purged and not pinned since.

They live in the region itself, as the extended attribute ``user.ashmem.purged`` of its
memfd inode (tmpfs has user xattrs since Linux 6.6), so every process that holds the region
sees the same marks and they die with the region. A purger adds a mark before it punches the
pages; a pin that finds a mark in its range reports ``WAS_PURGED`` and removes the marks of
that range. ``ashmem._pins`` explains the locking around them.

Layout (little-endian), version 1:

=======  ======  ===================================================================
offset   size    field
=======  ======  ===================================================================
0        1       version, 1
1        3       reserved, zero
4        4       ``n``: number of intervals (at most ``MAX_INTERVALS``)
8        16 n    ``n`` times (``first_page`` u64, ``end_page`` u64): purged pages
                 ``[first_page, end_page)``, sorted, disjoint and not touching
=======  ======  ===================================================================

A value that does not parse (a newer version, a wrong length, unsorted intervals: anyone who
can write the region can also write this attribute) is read as "every page purged". That is
the safe direction: a pin then reports ``WAS_PURGED`` and the caller regenerates data that
may have been fine, instead of trusting zeros. When more than ``MAX_INTERVALS`` intervals
would be stored, the two closest are merged (the gap between them is marked too): again the
safe direction, bounded at 4 KiB per region.

>>> blob = encode([(0, 2), (5, 6)])
>>> decode(blob, pages=8)
[(0, 2), (5, 6)]
>>> decode(b"junk", pages=8)
[(0, 8)]
"""

from __future__ import annotations

import struct

__all__ = ["MAX_INTERVALS", "NAME", "VERSION", "add", "decode", "encode", "overlaps", "subtract"]

#: The extended attribute that holds the marks.
NAME = "user.ashmem.purged"
VERSION = 1
MAX_INTERVALS = 255

_HEADER = struct.Struct("<B3xI")
_INTERVAL = struct.Struct("<QQ")

Intervals = list[tuple[int, int]]


def encode(intervals: Intervals) -> bytes:
    """The attribute value for sorted, disjoint ``intervals`` (merged down to the cap)."""
    merged = _normalise(intervals)
    while len(merged) > MAX_INTERVALS:
        gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
        i = gaps.index(min(gaps))
        merged[i : i + 2] = [(merged[i][0], merged[i + 1][1])]
    out = [_HEADER.pack(VERSION, len(merged))]
    out += [_INTERVAL.pack(first, end) for first, end in merged]
    return b"".join(out)


def decode(value: bytes, pages: int) -> Intervals:
    """The intervals stored in ``value``; ``[(0, pages)]`` (all purged) if it does not parse.
    Empty ``value``: nothing purged."""
    if not value:
        return []
    everything = [(0, pages)]
    if len(value) < _HEADER.size:
        return everything
    version, count = _HEADER.unpack_from(value)
    if version != VERSION or count > MAX_INTERVALS:
        return everything
    if len(value) != _HEADER.size + count * _INTERVAL.size:
        return everything
    out: Intervals = []
    last = -1
    for i in range(count):
        first, end = _INTERVAL.unpack_from(value, _HEADER.size + i * _INTERVAL.size)
        if not last < first < end or end > pages:
            return everything
        last = end
        out.append((first, end))
    return out


def _normalise(intervals: Intervals) -> Intervals:
    out: Intervals = []
    for first, end in sorted(intervals):
        if first >= end:
            continue
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((first, end))
    return out


def add(intervals: Intervals, first: int, end: int) -> Intervals:
    """``intervals`` with ``[first, end)`` marked.

    >>> add([(0, 2)], 2, 4)
    [(0, 4)]
    """
    return _normalise([*intervals, (first, end)])


def subtract(intervals: Intervals, first: int, end: int) -> Intervals:
    """``intervals`` without ``[first, end)``.

    >>> subtract([(0, 8)], 2, 4)
    [(0, 2), (4, 8)]
    """
    out: Intervals = []
    for a, b in intervals:
        if b <= first or a >= end:
            out.append((a, b))
            continue
        if a < first:
            out.append((a, first))
        if b > end:
            out.append((end, b))
    return out


def overlaps(intervals: Intervals, first: int, end: int) -> bool:
    """True if any interval shares a page with ``[first, end)``.

    >>> overlaps([(4, 6)], 0, 4), overlaps([(4, 6)], 0, 5)
    (False, True)
    """
    return any(a < end and first < b for a, b in intervals)
