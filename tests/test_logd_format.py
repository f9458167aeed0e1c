"""ashmem.logd ring and segment formats: round trips, wrap-around, drops, hostile bytes,
damaged files, encryption, de-duplication after a collector restart."""

from __future__ import annotations

import itertools
import mmap
import os
import pathlib
import random
import struct

import pytest

from ashmem.logd import _ring, _segment
from ashmem.logd._errors import KeyFileError


def _producer(size: int = 4096, **kw: object) -> tuple[mmap.mmap, _ring.Producer]:
    mm = mmap.mmap(-1, size)
    return mm, _ring.Producer(mm, ring_id=1, **kw)  # type: ignore[arg-type]


def _log(p: _ring.Producer, message: str, **kw: object) -> bool:
    return p.write_log(20, "INFO", "t", message, "Main", None, "{}", 1, 2)


def test_wraps_around_in_order() -> None:
    mm, p = _producer(on_full="drop")
    drain = _ring.Drain(mm)
    rng = random.Random(1)
    got: list[str] = []
    for i in range(500):  # many laps of a 4 KiB ring, random record sizes
        if p._free() < 400 or rng.random() < 0.3:
            got += [_ring.decode(r).message.split(":")[0] for r in drain.take()]
            drain.commit()
        assert _log(p, f"m{i}:" + "x" * rng.randrange(0, 300))
    got += [_ring.decode(r).message.split(":")[0] for r in drain.take()]
    assert got == [f"m{i}" for i in range(500)]


def test_full_ring_drops_are_counted_and_reported_in_order() -> None:
    mm, p = _producer(on_full="drop")
    drain = _ring.Drain(mm)
    written = 0
    while _log(p, f"m{written}"):
        written += 1
    assert not _log(p, "lost1") and not _log(p, "lost2")
    drain.take()
    drain.commit()
    assert _log(p, "after")
    records = [_ring.decode(r) for r in drain.take()]
    assert [r.message for r in records] == ["3 records dropped (ring full)", "after"]
    assert records[0].kind == _ring.KIND_DROPPED and records[0].levelname == "WARNING"
    assert [r.seq for r in records] == [written + 1, written + 2]


def test_block_mode_gives_up_after_its_timeout_and_counts() -> None:
    _mm, p = _producer(on_full="block", block_timeout=0.01)
    while _log(p, "fill"):
        pass
    assert p.dropped == 1


def test_block_mode_waits_once_per_stall_not_once_per_record() -> None:
    # A collector that is gone or stuck must not cost every later log call a whole
    # block_timeout: after one wait times out, records that do not fit are dropped at
    # once (counted) until the collector frees room; then writes block again.
    wakes: list[int] = []
    mm, p = _producer(on_full="block", block_timeout=0.01, wake=lambda: wakes.append(1))
    drain = _ring.Drain(mm)
    while _log(p, "fill"):
        pass
    assert len(wakes) == 1  # the one wait that timed out
    for _ in range(50):
        assert not _log(p, "lost")
    assert len(wakes) == 1 and p.dropped == 51
    drain.take()
    drain.commit()  # the collector is back and made room
    assert _log(p, "after")
    records = [_ring.decode(r) for r in drain.take()]
    assert [r.message for r in records] == ["51 records dropped (ring full)", "after"]
    drain.commit()
    while _log(p, "fill again"):
        pass
    assert len(wakes) == 2  # full again: it waited again before dropping


def test_oversized_record_is_truncated_not_lost() -> None:
    mm, p = _producer()
    assert p.write_log(20, "INFO", "t", "y" * 100_000, "Main", "tb" * 10_000, '{"a": 1}', 1, 2)
    (rec,) = [_ring.decode(r) for r in _ring.Drain(mm).take()]
    assert rec.message.startswith("yyy") and rec.message.endswith("[truncated by ashmem.logd]")


def test_half_visible_record_waits_then_is_accepted() -> None:
    """What a weakly ordered CPU can show: head published, record bytes not yet."""
    mm, p = _producer()
    _log(p, "first")
    saved = mm[_ring.HEADER_SIZE + 20 : _ring.HEADER_SIZE + 28]
    mm[_ring.HEADER_SIZE + 20 : _ring.HEADER_SIZE + 28] = b"\0" * 8  # not visible yet
    drain = _ring.Drain(mm)
    assert drain.take() == [] and drain.corrupt == 0
    mm[_ring.HEADER_SIZE + 20 : _ring.HEADER_SIZE + 28] = saved  # now it is
    assert [_ring.decode(r).message for r in drain.take()] == ["first"]


def test_write_plain_stores_the_same_bytes_as_write_log() -> None:
    """The cached fast path and the general path, record for record, wraps, pads, drops
    and truncation included: the two rings must stay byte for byte the same."""
    rng = random.Random(5)
    mm_a, plain = _producer(8192, on_full="drop")
    mm_b, full = _producer(8192, on_full="drop")
    plain.process = full.process = "Worker-1"
    plain._proc = b"Worker-1"
    drain_a, drain_b = _ring.Drain(mm_a), _ring.Drain(mm_b)
    loggers = ["app", "app.db", "\u00e9t\u00e9.\u4e2d", "x" * 2000, ""]
    levels = [(20, "INFO"), (10, "DEBUG"), (20, "NOTE"), (-5, "NEG"), (70000, "L" * 300)]
    for i in range(3000):
        levelno, levelname = rng.choice(levels)
        logger = rng.choice(loggers)
        message = rng.choice([f"m{i}", "\ud800 lone surrogate", "z" * rng.randrange(0, 900)])
        if rng.random() < 0.01:
            message = "y" * 10_000  # past the ring's record budget: truncated
        args = (levelno, levelname, logger, message)
        a = plain.write_plain(*args, time_ns=i, tid=77)
        b = full.write_log(*args, "Worker-1", None, "{}", i, 77)
        assert a == b
        assert mm_a[:] == mm_b[:], f"record {i} differs"
        if rng.random() < 0.2:
            assert drain_a.take() == drain_b.take()
            drain_a.commit()
            drain_b.commit()
    assert plain.dropped_total == full.dropped_total > 0


def test_write_plain_follows_a_renamed_level() -> None:
    mm, p = _producer()
    p.write_plain(20, "INFO", "app", "before", 1, 2)
    p.write_plain(20, "NOTE", "app", "after", 1, 2)  # logging.addLevelName(20, "NOTE")
    p.write_plain(20, "NOTE", "other", "other logger", 1, 2)
    got = [_ring.decode(r) for r in _ring.Drain(mm).take()]
    assert [(r.levelname, r.levelno, r.logger) for r in got] == [
        ("INFO", 20, "app"),
        ("NOTE", 20, "app"),
        ("NOTE", 20, "other"),
    ]


def test_write_plain_cache_is_bounded() -> None:
    _mm, p = _producer(1 << 16, on_full="drop")
    for i in range(5000):
        p.write_plain(20, "INFO", f"logger.{i}", "m", 1, 2)
    assert 0 < p._stamp_count <= 4096
    assert sum(len(levels) for levels in p._stamps.values()) == p._stamp_count


def test_garbage_ring_never_crashes_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ring.Drain, "GRACE", 0.0)
    rng = random.Random(9)
    for _ in range(200):
        mm, p = _producer()
        for i in range(rng.randrange(0, 40)):
            _log(p, f"m{i}")
        for _ in range(rng.randrange(1, 20)):
            at = rng.randrange(0, len(mm))
            mm[at] = rng.randrange(256)
        try:
            drain = _ring.Drain(mm)
        except ValueError:
            continue  # the header itself is garbage: refused at registration
        for _ in range(3):
            for raw in drain.take():
                _ring.decode(raw)  # whatever is accepted is a whole, valid record


def test_garbage_header_is_refused() -> None:
    with pytest.raises(ValueError, match="not a log ring"):
        _ring.Drain(mmap.mmap(-1, 4096))


# -- segment files --------------------------------------------------------------------


def _write_segment(directory: str, blocks: int, per_block: int = 20, **kw: object) -> str:
    mm, p = _producer(1 << 16)
    drain = _ring.Drain(mm)
    writer = _segment.SegmentWriter(directory, fsync="never", **kw)  # type: ignore[arg-type]
    for b in range(blocks):
        for i in range(per_block):
            _log(p, f"b{b}r{i}")
        body = b"".join(drain.take())
        writer.append([_segment.Chunk(1000, 42, 1, drain.last_seq, body)])
        drain.commit()
    writer.close()
    return writer.path


def _messages(items: list[object]) -> list[str]:
    return [e.record.message for i in items if isinstance(i, _segment.Block) for e in i.entries]


def test_segment_round_trip_with_cursor(tmp_path: object) -> None:
    d = str(tmp_path)
    _write_segment(d, 3)
    items = list(_segment.read_directory(d))
    assert _messages([i for i, _ in items]) == [f"b{b}r{i}" for b in range(3) for i in range(20)]
    cursor = items[0][1]
    rest = [i for i, _ in _segment.read_directory(d, cursor)]
    assert _messages(rest)[0] == "b1r0"
    assert _segment.last_seqs(d) == {(1000, 42, 1): 60}


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage-between"])
def test_damaged_segment_decodes_around_the_damage(tmp_path: object, damage: str) -> None:
    path = _write_segment(str(tmp_path), 4)
    data = bytearray(pathlib.Path(path).read_bytes())
    blocks = [b for b in _segment.read_segment(path) if isinstance(b, _segment.Block)]
    second = blocks[1]
    if damage == "truncate":
        data = data[: blocks[3].offset + 10]
    elif damage == "flip":
        data[second.offset + 40] ^= 0xFF
    else:
        data[second.end : second.end] = os.urandom(300)
    pathlib.Path(path).write_bytes(data)
    items = list(_segment.read_segment(path))
    damages = [i for i in items if isinstance(i, _segment.Damage)]
    got = _messages(items)
    assert len(damages) == 1
    if damage == "truncate":
        assert got == [f"b{b}r{i}" for b in range(3) for i in range(20)]
        assert (damages[0].start, damages[0].end) == (blocks[3].offset, len(data))
    elif damage == "flip":
        assert got == [f"b{b}r{i}" for b in (0, 2, 3) for i in range(20)]
        assert (damages[0].start, damages[0].end) == (second.offset, second.end)
    else:
        assert got == [f"b{b}r{i}" for b in range(4) for i in range(20)]
        assert (damages[0].start, damages[0].end) == (second.end, second.end + 300)
    assert str(damages[0]).startswith(f"{path}: bytes {damages[0].start}-")


def test_live_writer_tail_is_not_damage(tmp_path: object) -> None:
    mm, p = _producer()
    drain = _ring.Drain(mm)
    writer = _segment.SegmentWriter(str(tmp_path), fsync="never")
    _log(p, "done")
    writer.append([_segment.Chunk(0, 1, 1, 1, b"".join(drain.take()))])
    os.write(writer._fd, b"ALB1" + b"\0" * 10)  # a block being written
    assert [type(i) for i in _segment.read_segment(writer.path)] == [_segment.Block]
    writer.close()  # no writer any more: the same bytes are damage
    assert [type(i) for i in _segment.read_segment(writer.path)] == [
        _segment.Block,
        _segment.Damage,
    ]


def test_garbage_file_is_all_damage(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "seg-garbage.alog")
    with open(path, "wb") as f:
        f.write(b"\0" * 4 + os.urandom(4996))  # no file magic, whatever urandom gives
    items = list(_segment.read_segment(path))
    damages = [i for i in items if isinstance(i, _segment.Damage)]
    assert damages == items
    assert (damages[0].start, damages[0].end, damages[0].reason) == (0, 72, "bad file header")
    # Every byte is reported: the header, then the rest up to the end of the file.
    assert damages[-1].end == 5000
    assert all(a.end == b.start for a, b in itertools.pairwise(damages))


def test_damaged_file_header_keeps_the_blocks_after_it(tmp_path: object) -> None:
    path = _write_segment(str(tmp_path), 3)
    data = bytearray(pathlib.Path(path).read_bytes())
    data[10] ^= 0xFF  # the header's creation time: its checksum no longer matches
    pathlib.Path(path).write_bytes(data)
    items = list(_segment.read_segment(path))
    damages = [i for i in items if isinstance(i, _segment.Damage)]
    assert [(d.start, d.end, d.reason) for d in damages] == [(0, 72, "bad file header")]
    assert _messages(items) == [f"b{b}r{i}" for b in range(3) for i in range(20)]


def test_encrypted_round_trip_and_key_errors(tmp_path: object) -> None:
    from ashmem.logd import _crypto

    d = str(tmp_path)
    key, pub = _crypto.generate_keys(os.path.join(d, "ops"))
    other, _ = _crypto.generate_keys(os.path.join(d, "other"))
    assert os.stat(key).st_mode & 0o777 == 0o600
    path = _write_segment(d, 2, recipient=_crypto.load_public(pub))
    assert b"b0r0" not in pathlib.Path(path).read_bytes()
    assert _messages(list(_segment.read_segment(path, key=_crypto.load_private(key))))[:2] == [
        "b0r0",
        "b0r1",
    ]
    with pytest.raises(KeyFileError, match="encrypted"):
        list(_segment.read_segment(path))
    with pytest.raises(KeyFileError, match="another key"):
        list(_segment.read_segment(path, key=_crypto.load_private(other)))
    with pytest.raises(KeyFileError, match=r"not an X25519 private key|not an unencrypted"):
        _crypto.load_private(pub)
    # The index stays readable: a restarted collector de-duplicates without the key.
    assert _segment.last_seqs(d) == {(1000, 42, 1): 40}
    # A tampered encrypted block is damage, not garbage output.
    data = bytearray(pathlib.Path(path).read_bytes())
    data[-5] ^= 1
    struct.pack_into("<I", data, 72 + 24, 0)  # and fix nothing: crc fails too
    pathlib.Path(path).write_bytes(data)
    items = list(_segment.read_segment(path, key=_crypto.load_private(key)))
    assert any(isinstance(i, _segment.Damage) for i in items)


def test_restart_skips_records_already_persisted(tmp_path: object) -> None:
    """Collector wrote a block and died before moving the ring's tail."""
    d = str(tmp_path)
    mm, p = _producer(1 << 16)
    for i in range(10):
        _log(p, f"m{i}")
    drain = _ring.Drain(mm)
    writer = _segment.SegmentWriter(d, fsync="never")
    writer.append([_segment.Chunk(0, 7, p.ring_id, 10, b"".join(drain.take()))])
    writer.close()  # ... killed here: no commit()
    for i in range(10, 15):
        _log(p, f"m{i}")
    again = _ring.Drain(mm, skip_seq=_segment.last_seqs(d)[(0, 7, p.ring_id)])
    assert [_ring.decode(r).message for r in again.take()] == [f"m{i}" for i in range(10, 15)]


def test_collector_killed_between_the_commit_stores_loses_and_repeats_nothing() -> None:
    """``commit`` stores tail_seq = 0, tail, tail_seq: a new collector after a kill at any
    point between them takes every record not yet persisted, and nothing twice."""
    for stores_done in range(4):
        mm, p = _producer(1 << 16)
        for i in range(10):
            _log(p, f"m{i}")
        drain = _ring.Drain(mm)
        assert len(drain.take(limit=1)) == 1 and len(drain.take(limit=1)) == 1  # m0, m1
        drain.commit()
        drain.take(limit=1)  # m2, persisted; then the collector commits and is killed
        words = memoryview(mm)[: _ring.HEADER_SIZE].cast("Q")
        new_tail, new_seq = drain.tail, drain.expect
        steps = [(_ring._TAIL_SEQ_WORD, 0), (_ring._TAIL_WORD, new_tail),
                 (_ring._TAIL_SEQ_WORD, new_seq)]  # fmt: skip
        for index, value in steps[:stores_done]:
            words[index] = value
        words.release()
        drain.release()
        again = _ring.Drain(mm, skip_seq=3)  # the files hold m0..m2 (seq 1..3)
        got = [_ring.decode(r).message for r in again.take()]
        assert got == [f"m{i}" for i in range(3, 10)], stores_done
        again.release()
        p.release()
        mm.close()  # every header view was released


def _write_fast(mm: mmap.mmap, count: int) -> None:
    p = _ring.Producer(mm, ring_id=1, on_full="drop")
    drain_side = _ring.Drain(mm)  # the child commits for itself, as a collector would
    for i in range(count):
        if not _log(p, f"m{i}"):
            drain_side.take()
            drain_side.commit()
    os._exit(0)


def test_another_process_never_reads_head_going_back_while_the_producer_writes() -> None:
    """``head`` is published with one 8-byte store: a reader in another process sees it
    only grow. (Through ``struct.pack_into``, which zeroes its bytes before writing them,
    a reader saw 0 in about 7% of its reads on this machine.)"""
    mm = mmap.mmap(-1, 1 << 16)
    _ring.init_ring(mm, 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _write_fast(mm, 200_000)
    status = None
    try:
        words = memoryview(mm)[: _ring.HEADER_SIZE].cast("Q")
        last, reads = 0, 0
        while status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
            head = words[_ring._HEAD_WORD]
            assert head >= last, f"head went from {last} to {head} after {reads} reads"
            last, reads = head, reads + 1
        words.release()
    finally:
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert status == 0 and last > 0


def test_fast_paths_store_the_same_bytes_as_write_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct API's level methods and Handler.handle (which skip emit and go to
    write_plain): with wraps, drops, truncation and lone surrogates, their ring stays byte for
    byte write_log's."""
    import logging
    import threading
    import types

    import ashmem.logd
    from ashmem.logd import _client

    rng = random.Random(11)
    mm_a, ours = _producer(8192, on_full="drop", process="MainProcess")
    mm_b, full = _producer(8192, on_full="drop")
    client = types.SimpleNamespace(
        lock=threading.Lock(), producer=ours, next_check_ns=1 << 62, process="MainProcess"
    )
    monkeypatch.setattr(_client, "_client", client)
    monkeypatch.setattr(_client, "_time_ns", itertools.count(1000).__next__)
    tid = _client._thread_id()
    handler = ashmem.logd.Handler()
    std = logging.getLogger("inlined.std")
    std.handlers[:] = [handler]
    std.propagate = False
    std.setLevel(logging.DEBUG)
    direct = ashmem.logd.get_logger("inlined.direct")
    drain_a, drain_b = _ring.Drain(mm_a), _ring.Drain(mm_b)
    for i in range(3000):
        message = rng.choice([f"m{i}", "\ud800 lone surrogate", "z" * rng.randrange(0, 900)])
        if rng.random() < 0.01:
            message = "y" * 10_000  # past the ring's record budget: truncated
        via_std = rng.random() < 0.5
        level, levelname = rng.choice([(logging.INFO, "INFO"), (logging.ERROR, "ERROR")])
        before = ours.seq + ours.dropped_total
        if via_std:
            std.log(level, message)
        else:
            (direct.info if level == logging.INFO else direct.error)(message)
        assert ours.seq + ours.dropped_total > before
        logger = "inlined.std" if via_std else "inlined.direct"
        full.write_log(level, levelname, logger, message, "MainProcess", None, "{}",
                       1000 + i, tid)  # fmt: skip
        assert mm_a[:] == mm_b[:], f"record {i} differs"
        if rng.random() < 0.2:
            assert drain_a.take() == drain_b.take()
            drain_a.commit()
            drain_b.commit()
    assert ours.dropped_total == full.dropped_total > 0
