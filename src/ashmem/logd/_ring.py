"""The log ring: its byte layout, the producer that writes it and the drain that reads it.

One ring per client process, in an anonymous region that the client and the collector both
map. One producer writes (threads of the process serialize on a lock), one collector reads.
All integers little-endian (the header's shared words: see "Memory ordering").

Ring header (192 bytes; ``head`` and ``tail`` on cache lines of their own)::

    offset size field
    0      4    magic b"ALR1" (the 1 is the format version)
    4      4    data_size: bytes of the record area, a multiple of 8
    8      8    ring_id: random, chosen by the producer (with the kernel's uid and pid it
                names the ring in the files, for de-duplication after a collector restart)
    16     8    dropped: records dropped so far (informational, producer-written)
    24     4    pid: the producer's pid as it says (trusted only for a file-backed ring of
                this process's own, ``start(embedded=True)``; the collector takes the pid
                of a shared ring from the kernel)
    64     8    head: bytes ever published; written by the producer, LAST, after a record
    128    8    tail: bytes ever consumed AND persisted; written by the collector
    136    8    tail_seq: the seq of the record at ``tail`` (0: not known); written by the
                collector around ``tail`` (see "Memory ordering"), so that a new collector
                knows what to expect
    192    ..   record area (``data_size`` bytes), used as a circle: offset = counter %
                data_size

Record (starts at a multiple of 8; the next one starts at ``length`` rounded up to 8)::

    offset size field
    0      4    length: bytes of this record, header included, padding not
    4      4    crc: zlib.crc32(bytes[8:length], length) -- the length is the initial value
    8      8    seq: 1, 2, 3 ... per ring, no gaps
    16     1    kind: 1 log record, 2 pad (the rest of the area is unused, go to offset 0),
                3 "N records dropped" notice
    17     ..   kind 1: levelno u16, time_ns i64, tid u32, then the byte lengths of
                levelname u8, logger u16, message u32, process u16, exc u32 (0xFFFFFFFF =
                none), extra u32 (UTF-8 JSON object), then those six strings in that order
                kind 3: time_ns i64, count u64

When fewer than 24 bytes are left before the end of the area, both sides skip them without
a pad record.

Memory ordering (why the collector never accepts a half-written record)
-----------------------------------------------------------------------
Python gives no fences, and on aarch64 another core may see our stores in any order: the new
``head`` before the record bytes, the record's first half before its second. The protocol
does not rely on order. The producer writes the record (header and body), then stores the
new ``head``. The collector reads ``head`` and then looks only at records before it; each
must have (1) a ``length`` inside the published range and the area, (2) ``seq`` exactly one
more than the last accepted record of this ring, and (3) a crc32 over the whole record,
length included, that matches. A record whose bytes are not all visible yet fails (2) or
(3) -- stale bytes from the previous lap carry an older ``seq``, and a mix of old and new
bytes breaks the checksum -- and the collector leaves it for its next pass instead of
rejecting it: the stores become visible within microseconds. Only a record that stays
invalid for a whole grace period (a hostile or buggy producer) is declared corrupt; then the
collector skips to ``head`` and counts the loss against that ring only. A producer killed in
the middle of a record never stored the ``head`` that would publish it, so the collector
never looks at it: it loses that one record and nothing else.

Every store of a word the other side reads while both run (``head``, ``tail``,
``tail_seq``, ``dropped``) is ONE aligned 8-byte store, and every read of one is one
aligned 8-byte load: x86-64 and aarch64 never tear those, so a reader sees the old value or
the new one. Python has no atomic store, so the words are accessed through a
``memoryview`` cast to ``"Q"`` (native order, little-endian on both): CPython stores an
item with one fixed-size ``memcpy``, which compilers emit as a single move. Never
``struct.pack_into``: it clears its destination before writing it (CPython ``memset``s the
bytes first), so another process can read ``head == 0`` in between -- and a producer
SIGKILLed inside that window would leave 0 there for good, which read as "head went
backwards" and lost every record the collector had not yet drained (seen under load by
the SIGKILL test, 1 run in 10; a reader in another process saw 0 in 7% of its reads of a
``pack_into`` loop, and never a torn or zero value through the memoryview).

The collector commits in three stores: ``tail_seq = 0``, then ``tail``, then
``tail_seq``. A collector killed between any two leaves either the old pair, a new or old
``tail`` with "seq not known" (the next collector accepts the record at ``tail`` and drops
what the files already hold), or the new pair: never a ``tail`` paired with the wrong seq.

The collector updates ``tail`` only after the records it covers are written to the segment
file, so a collector killed at any point loses nothing: the next one starts again at
``tail`` and drops the records whose ``seq`` it finds already persisted.

The producer trusts nothing in the header but ``tail`` and clamps that to the range it can
be in, so a confused collector cannot make it write out of bounds either.

>>> import mmap
>>> mm = mmap.mmap(-1, 4096)
>>> producer = Producer(mm, ring_id=7)
>>> producer.write_log(20, "INFO", "app", "hello", "MainProcess", None, "{}", 123, 456)
True
>>> drain = Drain(mm)
>>> records = drain.take()
>>> decode(records[0]).message, decode(records[0]).seq
('hello', 1)
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HEADER_SIZE", "RING_MAGIC", "Drain", "Producer", "RawRecord", "decode"]

RING_MAGIC = b"ALR1"
HEADER_SIZE = 192
HEAD_OFFSET = 64
TAIL_OFFSET = 128
MIN_RING_SIZE = 4096
MAX_RING_SIZE = 256 << 20

KIND_LOG = 1
KIND_PAD = 2
KIND_DROPPED = 3

_SKIP = 24  # fewer bytes than this before the end of the area: skipped without a pad
_RING_HEAD = struct.Struct("<4sIQQ")
# The header's shared words, as indexes into a memoryview of 8-byte items.
_DROPPED_WORD = 16 // 8
_HEAD_WORD = HEAD_OFFSET // 8
_TAIL_WORD = TAIL_OFFSET // 8
_TAIL_SEQ_WORD = TAIL_OFFSET // 8 + 1
_REC_HEAD = struct.Struct("<IIQ")
_CRC_HEAD = struct.Struct("<II")
_PEEK = struct.Struct("<IIQB")
# seq, kind, levelno, time_ns, tid, then six string lengths
_LOG_FIXED = struct.Struct("<QBHqIBHIHII")
# _LOG_FIXED cut after the message length: write_plain packs these fields per record and
# keeps the rest (process, exc and extra lengths) encoded in its stamp.
_PLAIN_FIXED = struct.Struct("<QBHqIBHI")
_PLAIN_REST = struct.Struct("<HII")
# write_plain's calls, looked up once (each attribute lookup is a few % of a record).
_pack_plain = _PLAIN_FIXED.pack
_pack_crc_head = _CRC_HEAD.pack_into
_crc32 = zlib.crc32
_join = b"".join
_DROPPED_BODY = struct.Struct("<QBqQ")
_PAD_BODY = struct.Struct("<QB")
_NO_EXC = 0xFFFFFFFF
_MAX_FIELD = 0xFFFF
_MAX_NAME = 1024  # bytes of a logger name kept

RawRecord = bytes
# (levelname, levelno as stored, len(levelname bytes), len(logger bytes), middle, end)
_Stamp = tuple[str, int, int, int, bytes, bytes]


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _words(mm: object) -> memoryview:
    """The ring header as 8-byte words (see "Memory ordering"); release it before closing
    ``mm``."""
    buf = memoryview(mm)  # type: ignore[arg-type]
    try:
        return buf[:HEADER_SIZE].cast("B").cast("Q")
    finally:
        buf.release()


def init_ring(mm: object, ring_id: int, pid: int = 0) -> int:
    """Write a fresh ring header into ``mm`` (a writable buffer); return the area size.
    Nobody else may read the ring yet."""
    buf = memoryview(mm).cast("B")  # type: ignore[arg-type]
    try:
        data_size = (len(buf) - HEADER_SIZE) & ~7
        if data_size < MIN_RING_SIZE - HEADER_SIZE:
            raise ValueError(f"ring of {len(buf)} bytes is too small (at least {MIN_RING_SIZE})")
        _RING_HEAD.pack_into(buf, 0, RING_MAGIC, data_size, ring_id, 0)
        struct.pack_into("<I", buf, 24, pid & 0xFFFFFFFF)
        words = buf[:HEADER_SIZE].cast("Q")
        words[_HEAD_WORD] = 0
        words[_TAIL_WORD] = 0
        words[_TAIL_SEQ_WORD] = 1
        words.release()
    finally:
        buf.release()
    return data_size


class Producer:
    """Writes records into a ring. Not thread-safe: the client holds a lock around it.

    ``mm`` is a writable buffer (an ``mmap`` of the ring region) that this object borrows.
    ``ring_id`` is written into a fresh header, unless ``resume`` is true: then the header
    already there is kept and writing continues after its ``head`` with ``next_seq``.
    ``on_full`` is ``"block"`` (wait up to ``block_timeout`` seconds for the collector to
    make room, then drop; after a wait has timed out, records that do not fit are dropped
    without waiting until the collector frees room again) or ``"drop"``; drops are counted
    and a "N records dropped" record is written, in order, before the next record that
    fits. ``wake`` is called (at most once per wait) to ask the collector to drain now.
    ``process`` is the process name that ``write_plain`` stores.
    """

    def __init__(
        self,
        mm: object,
        ring_id: int,
        *,
        on_full: str = "block",
        block_timeout: float = 5.0,
        wake: Callable[[], None] | None = None,
        pid: int = 0,
        process: str = "MainProcess",
    ) -> None:
        if on_full not in ("block", "drop"):
            raise ValueError(f"on_full must be 'block' or 'drop', not {on_full!r}")
        self._mm = mm
        self.data_size = init_ring(mm, ring_id, pid)
        self._words = _words(mm)
        self.ring_id = ring_id
        self.on_full = on_full
        self.block_timeout = block_timeout
        self.wake = wake
        self.head = 0
        self.seq = 0
        self.dropped = 0  # not yet reported in a notice
        self.dropped_total = 0
        self._tail = 0
        self._limit = self.data_size  # head may grow up to here without reading the tail
        self.max_record = min(self.data_size // 2, 1 << 24)
        self._budget = self.max_record - 8 - _LOG_FIXED.size - 64 - 2 * 255 - _MAX_NAME
        # write_plain's message limit, the one write_log applies with no exc and "{}" extra:
        # past it, write_log truncates.
        self._plain_budget = self._budget - 2
        self._names: dict[str, bytes] = {}
        self._stalled = False  # a block wait timed out and no room has appeared since
        self.process = process
        self._proc = process.encode("utf-8", "replace")[:255]
        # write_plain's cache: logger -> levelno -> _Stamp (see there)
        self._stamps: dict[str, dict[int, _Stamp]] = {}
        self._stamp_count = 0

    def release(self) -> None:
        """Let go of the header view, so that the mapping can be closed."""
        self._words.release()

    def set_process(self, process: str) -> None:
        """The process name that ``write_plain`` stores from now on."""
        if process != self.process:
            self.process = process
            self._proc = process.encode("utf-8", "replace")[:255]
            self._stamps.clear()
            self._stamp_count = 0

    def _free(self) -> int:
        tail = self._words[_TAIL_WORD]
        head = self.head
        # Clamp: the tail can only be between head - data_size and head.
        if tail > head or tail < head - self.data_size:
            tail = self._tail
        self._tail = tail
        self._limit = tail + self.data_size
        return int(self.data_size - (head - tail))

    def _room(self, *lengths: int) -> int:
        """Bytes that records of these lengths take from the current head, wraps included."""
        pos = self.head % self.data_size
        total = 0
        for length in lengths:
            left = self.data_size - pos
            if left < _SKIP:
                total += left
                pos, left = 0, self.data_size
            if _round8(length) > left:
                total += left
                pos = 0
            total += _round8(length)
            pos += _round8(length)
        return total

    def _wait(self, need: int) -> bool:
        if self._free() >= need:
            self._stalled = False
            return True
        if self.on_full == "drop" or self._stalled:
            return False
        deadline = time.monotonic() + self.block_timeout
        if self.wake is not None:
            self.wake()
        pause = 0.0002
        while True:
            time.sleep(pause)
            if self._free() >= need:
                return True
            if time.monotonic() >= deadline:
                # The collector made no room in a whole block_timeout: it is gone or
                # stuck. Until it frees some, further records are dropped (counted) at
                # once instead of each waiting block_timeout again.
                self._stalled = True
                return False
            pause = min(pause * 2, 0.01)

    def _put(self, body: bytes) -> None:
        """Write one record whose bytes from ``seq`` on are ``body``; publish it."""
        mm = self._mm
        length = 8 + len(body)
        pos = self.head % self.data_size
        left = self.data_size - pos
        if left < _SKIP:
            self.head += left
            pos = 0
        elif _round8(length) > left:
            pad = _PAD_BODY.pack(self.seq, KIND_PAD)
            _CRC_HEAD.pack_into(mm, HEADER_SIZE + pos, 17, zlib.crc32(pad, 17))  # type: ignore[arg-type]
            mm[HEADER_SIZE + pos + 8 : HEADER_SIZE + pos + 17] = pad  # type: ignore[index]
            self.head += left
            pos = 0
        start = HEADER_SIZE + pos
        _CRC_HEAD.pack_into(mm, start, length, zlib.crc32(body, length))  # type: ignore[arg-type]
        mm[start + 8 : start + length] = body  # type: ignore[index]
        self.head += _round8(length)
        # Published last, in one store: see "Memory ordering" above.
        self._words[_HEAD_WORD] = self.head

    def write_log(
        self,
        levelno: int,
        levelname: str,
        logger: str,
        message: str,
        process: str,
        exc: str | None,
        extra: str,
        time_ns: int,
        tid: int,
    ) -> bool:
        """Write one log record; False if it was dropped (counted)."""
        names = self._names
        lvl = names.get(levelname)
        if lvl is None:
            lvl = names[levelname] = levelname.encode("utf-8", "replace")[:255]
        name = names.get(logger)
        if name is None:
            name = names[logger] = logger.encode("utf-8", "replace")[:_MAX_NAME]
        proc = names.get(process)
        if proc is None:
            proc = names[process] = process.encode("utf-8", "replace")[:255]
        if len(names) > 4096:
            names.clear()
        msg = message.encode("utf-8", "replace")
        exc_b = b"" if exc is None else exc.encode("utf-8", "replace")
        extra_b = extra.encode("utf-8", "replace")
        if len(msg) + len(exc_b) + len(extra_b) > self._budget:
            msg, exc_b, extra_b = self._truncate(msg, exc_b, extra_b, len(lvl) + len(name))
        if not 0 <= levelno <= _MAX_FIELD:
            levelno = min(max(levelno, 0), _MAX_FIELD)
        if not 0 <= tid <= 0xFFFFFFFF:
            tid = 0
        seq = self.seq + 1
        body = (
            _LOG_FIXED.pack(
                seq, KIND_LOG, levelno, time_ns, tid, len(lvl), len(name), len(msg),
                len(proc), _NO_EXC if exc is None else len(exc_b), len(extra_b),
            )
            + lvl + name + msg + proc + exc_b + extra_b
        )  # fmt: skip
        # Fast path: no drops to report, no wrap, room known without reading the tail.
        length = 8 + len(body)
        padded = (length + 7) & ~7
        head = self.head
        pos = head % self.data_size
        if not self.dropped and padded <= self.data_size - pos and head + padded <= self._limit:
            start = HEADER_SIZE + pos
            mm = self._mm
            _CRC_HEAD.pack_into(mm, start, length, zlib.crc32(body, length))  # type: ignore[arg-type]
            mm[start + 8 : start + length] = body  # type: ignore[index]
            self.head = head = head + padded
            self.seq = seq
            self._words[_HEAD_WORD] = head  # one store, last: see "Memory ordering"
            return True
        return self._write_slow(body, seq, time_ns)

    def write_plain(
        self, levelno: int, levelname: str, logger: str, message: str, time_ns: int, tid: int
    ) -> bool:
        """``write_log(levelno, levelname, logger, message, self.process, None, "{}",
        time_ns, tid)``, the same bytes in the ring, with less work per record: the bytes
        that depend only on (logger, levelno, levelname) are encoded once and kept.
        ``tid`` must fit in 32 bits (the client checks it once per thread).
        """
        try:
            stamp = self._stamps[logger][levelno]
        except KeyError:
            stamp = None
        if stamp is None or stamp[0] != levelname:  # new, or the level was renamed
            stamp = self._stamp(levelno, levelname, logger)
        _, level, n_lvl, n_name, middle, end = stamp
        try:
            msg = message.encode()  # faster than naming the codec and the error handler
        except UnicodeEncodeError:  # a lone surrogate
            msg = message.encode("utf-8", "replace")
        if len(msg) > self._plain_budget:
            return self.write_log(
                levelno, levelname, logger, message, self.process, None, "{}", time_ns, tid
            )
        seq = self.seq + 1
        body = _join(
            (_pack_plain(seq, KIND_LOG, level, time_ns, tid, n_lvl, n_name, len(msg)), middle,
             msg, end)
        )  # fmt: skip
        # From here on as in write_log.
        length = 8 + len(body)
        padded = (length + 7) & ~7
        head = self.head
        pos = head % self.data_size
        if not self.dropped and padded <= self.data_size - pos and head + padded <= self._limit:
            start = HEADER_SIZE + pos
            mm = self._mm
            _pack_crc_head(mm, start, length, _crc32(body, length))  # type: ignore[arg-type]
            mm[start + 8 : start + length] = body  # type: ignore[index]
            self.head = head = head + padded
            self.seq = seq
            self._words[_HEAD_WORD] = head  # one store, last: see "Memory ordering"
            return True
        return self._write_slow(body, seq, time_ns)

    def _stamp(self, levelno: int, levelname: str, logger: str) -> _Stamp:
        """Encode what ``write_plain`` keeps for (logger, levelno): the levelname it was
        made for, the levelno as stored, the two name lengths, the bytes between the fixed
        fields and the message, and the bytes after the message (process, no exc, "{}")."""
        if self._stamp_count >= 4096:  # bound what a program with endless loggers holds
            self._stamps.clear()
            self._stamp_count = 0
        lvl = levelname.encode("utf-8", "replace")[:255]
        name = logger.encode("utf-8", "replace")[:_MAX_NAME]
        middle = _PLAIN_REST.pack(len(self._proc), _NO_EXC, 2) + lvl + name
        stamp = (
            levelname,
            min(max(levelno, 0), _MAX_FIELD),
            len(lvl),
            len(name),
            middle,
            self._proc + b"{}",
        )
        self._stamps.setdefault(logger, {})[levelno] = stamp
        self._stamp_count += 1
        return stamp

    def _truncate(
        self, msg: bytes, exc_b: bytes, extra_b: bytes, names: int
    ) -> tuple[bytes, bytes, bytes]:
        """Too large for this ring: keep the start of each text field and say so."""
        cap = max(0, self._budget - names) // 3
        if len(msg) > cap:
            msg = msg[:cap] + b" [truncated by ashmem.logd]"
        if len(exc_b) > cap:
            exc_b = exc_b[:cap] + b"\n[truncated by ashmem.logd]"
        if len(extra_b) > cap:
            extra_b = b'{"ashmem_truncated": true}'
        return msg, exc_b, extra_b

    def _write_slow(self, body: bytes, seq: int, time_ns: int) -> bool:
        lengths = (8 + _DROPPED_BODY.size, 8 + len(body)) if self.dropped else (8 + len(body),)
        if not self._wait(self._room(*lengths)):
            self.dropped += 1
            self.dropped_total += 1
            self._words[_DROPPED_WORD] = self.dropped_total
            return False
        if self.dropped:
            self.seq += 1
            self._put(_DROPPED_BODY.pack(self.seq, KIND_DROPPED, time_ns, self.dropped))
            self.dropped = 0
            seq = self.seq + 1
            fixed = _LOG_FIXED.size
            body = _LOG_FIXED.pack(seq, *_LOG_FIXED.unpack_from(body)[1:]) + body[fixed:]
        self.seq = seq
        self._put(body)
        return True


@dataclass(frozen=True)
class Record:
    """One decoded log record (``pid``/``uid`` come from the segment, not the ring)."""

    seq: int
    kind: int
    levelno: int
    levelname: str
    time_ns: int
    tid: int
    logger: str
    message: str
    process: str
    exc: str | None
    extra: str


def check(raw: bytes | memoryview) -> bool:
    """True if ``raw`` is exactly one record with a matching checksum."""
    if len(raw) < 17:
        return False
    length, crc = _CRC_HEAD.unpack_from(raw)
    return bool(length == len(raw) and zlib.crc32(raw[8:], length) == crc)


def decode(raw: bytes | memoryview) -> Record:
    """Decode one record (as stored in the ring and in segment files).

    Raises ``ValueError`` naming the problem if it is malformed.
    """
    if not check(raw):
        raise ValueError("log record fails its length or checksum")
    seq, kind = struct.unpack_from("<QB", raw, 8)
    if kind == KIND_DROPPED:
        _, _, time_ns, count = _DROPPED_BODY.unpack_from(raw, 8)
        return Record(
            seq, kind, 30, "WARNING", time_ns, 0, "ashmem.logd",
            f"{count} records dropped (ring full)", "", None, "{}",
        )  # fmt: skip
    if kind != KIND_LOG:
        raise ValueError(f"log record of unknown kind {kind}")
    (_, _, levelno, time_ns, tid, n_lvl, n_name, n_msg, n_proc, n_exc, n_extra) = (
        _LOG_FIXED.unpack_from(raw, 8)
    )
    at = 8 + _LOG_FIXED.size
    parts = []
    for n in (n_lvl, n_name, n_msg, n_proc, 0 if n_exc == _NO_EXC else n_exc, n_extra):
        if at + n > len(raw):
            raise ValueError("log record fields overrun its length")
        parts.append(bytes(raw[at : at + n]).decode("utf-8", "replace"))
        at += n
    lvl, name, msg, proc, exc, extra = parts
    return Record(
        seq, kind, levelno, lvl, time_ns, tid, name, msg, proc,
        None if n_exc == _NO_EXC else exc, extra,
    )  # fmt: skip


class Drain:
    """The collector's side of one ring: takes the published, valid records.

    ``mm`` is a readable and writable buffer of the ring that this object borrows (it
    writes ``tail`` through ``commit``). The header is validated first: ``ValueError`` if it
    is not a ring. Reading starts at the ring's ``tail``; records with ``seq <= skip_seq``
    (persisted by an earlier collector) are dropped on the way.
    """

    GRACE = 1.0  # seconds a record before head may stay invalid before it counts as corrupt

    def __init__(self, mm: object, skip_seq: int = 0) -> None:
        self._mm = mm
        size = len(mm)  # type: ignore[arg-type]
        if size < MIN_RING_SIZE:
            raise ValueError(f"ring of {size} bytes is smaller than {MIN_RING_SIZE}")
        magic, data_size, ring_id, _ = _RING_HEAD.unpack_from(mm)  # type: ignore[arg-type]
        if magic != RING_MAGIC:
            raise ValueError(f"not a log ring (magic {magic!r}, want {RING_MAGIC!r})")
        if data_size % 8 or data_size < MIN_RING_SIZE - HEADER_SIZE:
            raise ValueError(f"ring declares a bad area size {data_size}")
        if HEADER_SIZE + data_size > size:
            raise ValueError(f"ring declares {data_size} bytes but the region is {size}")
        self.data_size = data_size
        self.ring_id = ring_id
        self.pid_hint = struct.unpack_from("<I", mm, 24)[0]  # type: ignore[arg-type]
        self._words = words = _words(mm)
        tail, tail_seq, head = words[_TAIL_WORD], words[_TAIL_SEQ_WORD], words[_HEAD_WORD]
        self.corrupt = 0
        self.expect: int | None = tail_seq if tail_seq > 0 else None  # next seq; None = any
        if tail % 8 or tail > head or head - tail > data_size:
            tail = head  # a garbage header: start over at the producer's head
            self.corrupt = 1
            self.expect = None
        self.tail = tail
        self.last_seq = skip_seq
        self.last_corruption: tuple[int, int | None, int | None] | None = None
        self._pending_since: float | None = None

    def release(self) -> None:
        """Let go of the header view, so that the mapping can be closed."""
        self._words.release()

    def rebind(self, mm: object) -> None:
        """Go on reading the same ring through another mapping of it (``mm``, borrowed)."""
        self._words.release()
        self._mm = mm
        self._words = _words(mm)

    def fill(self) -> tuple[int, int]:
        """(bytes published and not yet taken, area size): for status displays."""
        head = self._words[_HEAD_WORD]
        return max(0, min(head - self.tail, self.data_size)), self.data_size

    def take(self, limit: int = 1 << 30) -> list[bytes]:
        """The valid records published since the last call (up to about ``limit`` bytes).

        Does not move ``tail`` in the ring: call ``commit()`` once they are persisted.
        """
        mm = self._mm
        head = self._words[_HEAD_WORD]
        size = self.data_size
        if head < self.tail or head - self.tail > size or head % 8:
            return self._corrupted(head if head % 8 == 0 and head > self.tail else None)
        out: list[bytes] = []
        # Per record this loop is most of the collector's work: locals, not attributes.
        append = out.append
        peek = _PEEK.unpack_from
        crc32 = zlib.crc32
        expect, last_seq = self.expect, self.last_seq
        taken = 0
        valid = False  # a valid record seen: whatever was pending became visible
        bad = False  # stopped at a record that is not (yet) valid
        pos_abs = self.tail
        while pos_abs < head and taken < limit:
            pos = pos_abs % size
            left = size - pos
            if left < _SKIP:
                pos_abs += left
                continue
            start = HEADER_SIZE + pos
            length = peek(mm, start)[0]  # type: ignore[arg-type]
            padded = (length + 7) & ~7
            if length < 17 or padded > left or pos_abs + padded > head:
                bad = True
                break
            raw = mm[start : start + length]  # type: ignore[index]
            # Checked on the copy we keep (the producer could be writing the ring now):
            # header fields, then the checksum over every byte of the copy.
            copied, crc, seq, kind = peek(raw)
            if (
                copied != length
                or crc32(raw[8:], length) != crc
                or (seq != expect if expect is not None else seq <= 0)
            ):
                bad = True
                break
            valid = True
            if kind == KIND_PAD:
                pos_abs += left
                continue
            expect = seq + 1
            pos_abs += padded
            if seq > last_seq:
                append(raw)
                taken += length
                last_seq = seq
        if valid:
            self._pending_since = None
        self.expect, self.last_seq = expect, last_seq
        if bad and self._invalid(head):
            self.tail = pos_abs  # the records before the bad one are taken
            return out + self._corrupted(head)
        self.tail = pos_abs
        return out

    def _invalid(self, head: int) -> bool:
        now = time.monotonic()
        if self._pending_since is None:
            self._pending_since = now
            return False
        return now - self._pending_since >= self.GRACE

    def _corrupted(self, head: int | None) -> list[bytes]:
        self.last_corruption = (self.tail, head, self.expect)
        self.corrupt += 1
        self._pending_since = None
        self.expect = None
        if head is not None:
            self.tail = head
        return []

    def commit(self) -> None:
        """Tell the producer that everything taken so far is persisted (frees the space)."""
        # Three single stores, in this order: see "Memory ordering" above.
        words = self._words
        words[_TAIL_SEQ_WORD] = 0
        words[_TAIL_WORD] = self.tail
        words[_TAIL_SEQ_WORD] = self.expect or 0

    def published(self) -> int:
        """The producer's ``head`` as it is now (for flush)."""
        return int(self._words[_HEAD_WORD])
