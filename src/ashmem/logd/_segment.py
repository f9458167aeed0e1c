"""Segment files: the on-disk format of collected logs, its writer and its reader.

A log directory holds segment files named ``seg-<UTC time>-<collector pid>-<n>.alog``; names
sort in writing order. A file is a header followed by independently framed blocks, so that a
reader can resynchronise after any damage. All integers little-endian.

File header (72 bytes)::

    offset size field
    0      4    magic b"ALF1" (the 1 is the format version)
    4      4    flags: bit 0 = blocks are encrypted (see ``_crypto``)
    8      8    created, ns since the epoch
    16     32   ephemeral X25519 public key (zeros when not encrypted)
    48     16   id of the recipient's public key (zeros when not encrypted)
    64     4    crc32 of bytes 0-63
    68     4    reserved, 0

Block (one ``write`` each; the collector writes one per drain pass)::

    offset size field
    0      4    magic b"ALB1" (the 1 is the format version)
    4      4    stored: bytes of payload after the index
    8      8    number: 0, 1, 2 ... in this file (the AEAD nonce)
    16     4    plain: bytes of the body once decompressed (at most 64 MiB)
    20     2    chunks: entries in the index
    22     2    flags: bit 0 = payload is zstd-compressed
    24     4    crc32 of bytes 0-23, the index and the payload
    28     4    reserved, 0
    32     28 * chunks   index, one entry per ring drained into this block:
                         uid u32, pid u32, ring_id u64, last_seq u64, bytes u32
    ..     stored        payload: the body, zstd-compressed, then (if the file is encrypted)
                         AES-256-GCM-sealed with bytes 0-31 and the index as associated data

The body is, for each index entry in order, ``bytes`` bytes of records of that ring exactly
as they were in the ring (``_ring``): stored as they came, decoded only when read. ``uid`` and
``pid`` come from the kernel (``SO_PEERCRED``) when the ring was registered. The index is
plain text even in encrypted files: it tells a restarted collector which sequence numbers
are already persisted (it cannot decrypt), at the price of showing pids and record counts.

Reading (``read_segment``) yields every intact block and, for each damaged byte range, where
it is and why; the unfinished tail of a file that a live collector holds (``flock``) is not
damage. ``Cursor`` (a file name and an offset) lets a forwarder read a directory
incrementally and resume where it stopped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._ring import Record, decode

__all__ = [
    "Block",
    "Cursor",
    "Damage",
    "Entry",
    "SegmentWriter",
    "last_seqs",
    "read_directory",
    "read_segment",
    "segment_paths",
]

FILE_MAGIC = b"ALF1"
BLOCK_MAGIC = b"ALB1"
SUFFIX = ".alog"
_FILE_HEAD = struct.Struct("<4sIq32s16s")
_FILE_HEAD_SIZE = 72
_BLOCK_HEAD = struct.Struct("<4sIQIHH")
_BLOCK_HEAD_SIZE = 32
_INDEX = struct.Struct("<IIQQI")
_FLAG_ENCRYPTED = 1
_FLAG_ZSTD = 1
MAX_PLAIN = 64 << 20
_MAX_STORED = MAX_PLAIN + (1 << 20)
_os_write = os.write  # the one write call of the collector (tests inject faults here)


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise ImportError(
            "ashmem.logd segment files need the 'zstandard' package: pip install 'ashmem[logs]'"
        ) from exc
    return zstandard


@dataclass(frozen=True)
class Chunk:
    """Records of one ring in one block: ``records`` is their bytes, back to back."""

    uid: int
    pid: int
    ring_id: int
    last_seq: int
    records: bytes


class SegmentWriter:
    """Appends blocks to one new segment file in ``directory``, holding an exclusive
    ``flock`` on it while open (readers take that to mean "still being written").

    ``recipient`` is a raw X25519 public key to encrypt to, or None. ``fsync`` is
    ``"always"`` (after every block), ``"interval"`` (at most once a second) or ``"never"``.
    """

    def __init__(
        self,
        directory: str,
        *,
        recipient: bytes | None = None,
        fsync: str = "interval",
        level: int = 3,
        sequence: int = 0,
    ) -> None:
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', not {fsync!r}")
        self._compressor = _zstd().ZstdCompressor(level=level)
        self._sealer = None
        flags = 0
        eph_pub, key_id = bytes(32), bytes(16)
        if recipient is not None:
            from ._crypto import Sealer

            self._sealer = Sealer(recipient)
            eph_pub, key_id = self._sealer.ephemeral_pub, self._sealer.key_id
            flags |= _FLAG_ENCRYPTED
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"seg-{stamp}-{os.getpid()}-{sequence:06d}{SUFFIX}"
        self.path = os.path.join(directory, name)
        # Made under a hidden name, locked and given its header, then linked into place
        # (link fails if the name exists, like O_EXCL): a reader never sees a segment that
        # is unlocked and empty, which it would take for a finished, damaged file.
        hidden = os.path.join(directory, f".{name}.{os.getpid()}.new")
        self._fd = os.open(
            hidden, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            head = _FILE_HEAD.pack(FILE_MAGIC, flags, time.time_ns(), eph_pub, key_id)
            head += struct.pack("<II", zlib.crc32(head), 0)
            self.size = 0
            self._number = 0
            self.fsync = fsync
            self._synced = time.monotonic()
            self.created = time.time()
            self._write(head)
            os.link(hidden, self.path)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(hidden)

    def _write(self, data: bytes) -> None:
        """Write all of ``data`` or nothing: on failure the file is cut back (ENOSPC...)."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += _os_write(self._fd, view[done:])
        except OSError:
            if done:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def append(self, chunks: Sequence[Chunk]) -> int:
        """Write one block holding ``chunks``; return its size. Raises OSError (ENOSPC...)
        with the file unchanged."""
        body = b"".join(c.records for c in chunks)
        if len(body) > MAX_PLAIN:
            raise ValueError(f"block body of {len(body)} bytes exceeds {MAX_PLAIN}")
        index = b"".join(
            _INDEX.pack(c.uid, c.pid, c.ring_id, c.last_seq, len(c.records)) for c in chunks
        )
        payload = self._compressor.compress(body)
        sealed = self._sealer is not None
        stored = len(payload) + (16 if sealed else 0)  # + the AES-GCM tag
        head = _BLOCK_HEAD.pack(
            BLOCK_MAGIC, stored, self._number, len(body), len(chunks), _FLAG_ZSTD
        )
        if self._sealer is not None:
            payload = self._sealer.seal(self._number, payload, head + index)
        crc = zlib.crc32(payload, zlib.crc32(index, zlib.crc32(head)))
        block = b"".join((head, struct.pack("<II", crc, 0), index, payload))
        self._write(block)
        self._number += 1
        if self.fsync == "always" or (
            self.fsync == "interval" and time.monotonic() - self._synced >= 1.0
        ):
            self.sync()
        return len(block)

    def sync(self) -> None:
        if self.fsync != "never":
            os.fsync(self._fd)
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                if self.fsync != "never":
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1


@dataclass(frozen=True)
class Entry:
    """One log record as read back: the ring's fields plus the kernel's pid and uid.
    ``to_json()`` gives the ``--json`` object; see the example of ``ashmem.logd``."""

    record: Record
    pid: int
    uid: int
    ring_id: int

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: exactly the keys the CLI documents."""
        r = self.record
        try:
            # NaN and the infinities (which json.dumps writes and strict parsers refuse)
            # come out as the strings "NaN", "Infinity" and "-Infinity".
            extra = json.loads(r.extra, parse_constant=str) if r.extra else {}
            if not isinstance(extra, dict):
                extra = {"extra": extra}
        except ValueError:
            extra = {"unparsed": r.extra}
        secs, ns = divmod(r.time_ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        return {
            "time": f"{stamp}.{ns // 1000:06d}Z",
            "time_ns": r.time_ns,
            "level": r.levelname,
            "levelno": r.levelno,
            "logger": r.logger,
            "message": r.message,
            "pid": self.pid,
            "tid": r.tid,
            "process": r.process,
            "uid": self.uid,
            "seq": r.seq,
            "exc": r.exc,
            "extra": extra,
        }


@dataclass(frozen=True)
class Cursor:
    """Where to resume reading a directory: the segment's file name and a byte offset in it
    (always the end of a whole block).

    >>> Cursor("seg-20261202T000000-1-000000.alog", 72).offset
    72
    """

    segment: str
    offset: int


@dataclass(frozen=True)
class Block:
    """An intact block: its entries, where it starts and where the next one starts."""

    path: str
    offset: int
    end: int
    entries: list[Entry]


@dataclass(frozen=True)
class Damage:
    """A damaged byte range ``[start, end)`` of ``path`` and the reason."""

    path: str
    start: int
    end: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: bytes {self.start}-{self.end} damaged ({self.reason})"


def _locked_by_writer(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _parse_block(
    data: bytes, at: int, opener: Any, decompressor: Any
) -> tuple[int, list[tuple[int, int, int, bytes]]] | str:
    """(end offset, chunks) of the block at ``at``, or the reason it is not a valid one.
    The reason "truncated" means the data ends inside it."""
    if len(data) - at < _BLOCK_HEAD_SIZE:
        return "truncated"
    magic, stored, number, plain, nchunks, flags = _BLOCK_HEAD.unpack_from(data, at)
    if magic != BLOCK_MAGIC:
        return "bad block magic"
    if stored > _MAX_STORED or plain > MAX_PLAIN:
        return "block header declares an impossible size"
    index_end = at + _BLOCK_HEAD_SIZE + nchunks * _INDEX.size
    end = index_end + stored
    if end > len(data):
        return "truncated"
    crc = struct.unpack_from("<I", data, at + 24)[0]
    view = memoryview(data)
    if zlib.crc32(view[index_end:end], zlib.crc32(view[at + 32 : index_end],
                  zlib.crc32(view[at : at + 24]))) != crc:  # fmt: skip
        return "checksum mismatch"
    payload = bytes(view[index_end:end])
    if opener is not None:
        try:
            payload = opener.open(
                number, payload, bytes(view[at : at + 24]) + bytes(view[at + 32 : index_end])
            )
        except ValueError as exc:
            return str(exc)
    body = payload
    if flags & _FLAG_ZSTD:
        try:
            body = decompressor.decompress(payload, max_output_size=plain)
        except Exception as exc:  # zstandard raises its own ZstdError
            return f"cannot decompress: {exc}"
    if len(body) != plain:
        return "block body has the wrong length"
    chunks = []
    pos = 0
    for i in range(nchunks):
        uid, pid, ring_id, _last, nbytes = _INDEX.unpack_from(data, at + 32 + i * _INDEX.size)
        if pos + nbytes > len(body):
            return "block index overruns its body"
        chunks.append((uid, pid, ring_id, body[pos : pos + nbytes]))
        pos += nbytes
    return end, chunks


def _entries(chunks: list[tuple[int, int, int, bytes]]) -> tuple[list[Entry], str | None]:
    out: list[Entry] = []
    for uid, pid, ring_id, records in chunks:
        at = 0
        while at + 4 <= len(records):
            length = int.from_bytes(records[at : at + 4], "little")
            if length < 17 or at + length > len(records):
                return out, "record length out of range"
            try:
                rec = decode(records[at : at + length])
            except ValueError as exc:
                return out, str(exc)
            out.append(Entry(rec, pid, uid, ring_id))
            at += length
    return out, None


def read_segment(path: str, offset: int = 0, *, key: Any = None) -> Iterator[Block | Damage]:
    """Yield the intact blocks of the segment file ``path`` from ``offset`` on, and a
    ``Damage`` for every damaged range (the reader resynchronises on the next block magic).

    ``key`` is a private key from ``_crypto.load_private`` for encrypted files;
    ``KeyFileError`` if the file is encrypted and the key is missing or another one.
    """
    zstd = _zstd()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        live = _locked_by_writer(fd)
        head = os.pread(fd, _FILE_HEAD_SIZE, 0)
        # Only the bytes from ``offset`` on are read (a forwarder resuming in a 64 MiB
        # segment reads what is new); ``data[i]`` is byte ``base + i`` of the file.
        base = max(offset, _FILE_HEAD_SIZE)
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(base)
            data = f.read()
    finally:
        os.close(fd)
    decompressor = zstd.ZstdDecompressor()
    if len(head) < _FILE_HEAD_SIZE:
        if not live:
            yield Damage(path, 0, len(head), "file shorter than its header")
        return
    magic, flags, _created, eph_pub, key_id = _FILE_HEAD.unpack_from(head)
    opener = None
    if magic != FILE_MAGIC or zlib.crc32(head[:64]) != struct.unpack_from("<I", head, 64)[0]:
        # Blocks carry their own magic and checksum: read on as if the file were not
        # encrypted (without the header's ephemeral key an encrypted block cannot be
        # opened, and shows as damage), so that the intact blocks still come out.
        yield Damage(path, 0, _FILE_HEAD_SIZE, "bad file header")
    elif flags & _FLAG_ENCRYPTED:
        from ._crypto import Opener
        from ._errors import KeyFileError

        if key is None:
            raise KeyFileError(f"{path} is encrypted: give the private key (--key NAME.key)")
        opener = Opener(key, eph_pub, key_id)
    at = 0
    damage_from: int | None = None
    while at < len(data):
        parsed = _parse_block(data, at, opener, decompressor)
        if isinstance(parsed, str):
            if parsed == "truncated" and live and damage_from is None:
                return  # the block a live collector is writing
            if damage_from is None:
                damage_from, reason = at, parsed
            nxt = data.find(BLOCK_MAGIC, at + 1)
            if nxt < 0:
                break
            at = nxt
            continue
        end, chunks = parsed
        if damage_from is not None:
            yield Damage(path, base + damage_from, base + at, reason)
            damage_from = None
        entries, problem = _entries(chunks)
        yield Block(path, base + at, base + end, entries)
        if problem is not None:
            yield Damage(path, base + at, base + end, problem)
        at = end
    if damage_from is not None:
        yield Damage(path, base + damage_from, base + len(data), reason)


def segment_paths(directory: str) -> list[str]:
    """The segment files of ``directory``, oldest first."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX) and n.startswith("seg-"))
    return [os.path.join(directory, n) for n in names]


def read_directory(
    directory: str, cursor: Cursor | None = None, *, key: Any = None
) -> Iterator[tuple[Block | Damage, Cursor]]:
    """Every block (and damage) of every segment of ``directory`` after ``cursor``, each
    with the cursor to resume from after it. For forwarders: keep the last cursor, call
    again later with it to get only what was written since.
    """
    for path in segment_paths(directory):
        name = os.path.basename(path)
        if cursor is not None and name < cursor.segment:
            continue
        offset = cursor.offset if cursor is not None and name == cursor.segment else 0
        for item in read_segment(path, offset, key=key):
            end = item.end
            yield item, Cursor(name, end)


def last_seqs(directory: str) -> dict[tuple[int, int, int], int]:
    """``{(uid, pid, ring_id): last persisted seq}`` from the block indexes of the newest
    segment of ``directory`` (plain text even when encrypted): what a restarted collector
    must not write again."""
    out: dict[tuple[int, int, int], int] = {}
    paths = segment_paths(directory)
    for path in paths[-2:]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        at = _FILE_HEAD_SIZE
        while at + _BLOCK_HEAD_SIZE <= len(data):
            magic, stored, _n, _p, nchunks, _f = _BLOCK_HEAD.unpack_from(data, at)
            index_end = at + _BLOCK_HEAD_SIZE + nchunks * _INDEX.size
            end = index_end + stored
            if magic != BLOCK_MAGIC or end > len(data):
                break
            crc = struct.unpack_from("<I", data, at + 24)[0]
            if zlib.crc32(data[index_end:end], zlib.crc32(data[at + 32 : index_end],
                          zlib.crc32(data[at : at + 24]))) != crc:  # fmt: skip
                break
            for i in range(nchunks):
                uid, pid, ring_id, last, _b = _INDEX.unpack_from(data, at + 32 + i * _INDEX.size)
                key = (uid, pid, ring_id)
                out[key] = max(out.get(key, 0), last)
            at = end
    return out
