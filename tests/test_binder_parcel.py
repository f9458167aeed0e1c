"""Parcel: typed encoding, descriptor ownership, and decoding of untrusted bytes.

The property tests feed the decoder arbitrary and mutated encodings (thousands of inputs):
every read must either return a value or raise ``BadParcel``, never anything else, and no
descriptor may leak.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ashmem
from ashmem.binder import BadParcel, Parcel, Proxy, _wire
from ashmem.binder._parcel import MAX_PARCEL_FDS


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def roundtrip(parcel: Parcel) -> Parcel:
    parcel.set_data_position(0)
    return parcel


# -- values ------------------------------------------------------------------------------------


def test_every_type_round_trips() -> None:
    p = Parcel()
    p.write_int(-(2**31))
    p.write_long(2**63 - 1)
    p.write_float(1.5)
    p.write_double(math.pi)
    p.write_bool(True)
    p.write_string("ünïcødé ✓")
    p.write_string(None)
    p.write_bytes(bytearray(b"\x00\xff"))
    p.write_bytes(None)
    p.write_int_list([1, -2])
    p.write_long_list([2**40])
    p.write_float_list([0.25])
    p.write_double_list([1e300])
    p.write_bool_list([True, False])
    p.write_string_list(["a", None, ""])
    p.write_string_list(None)
    roundtrip(p)
    assert p.read_int() == -(2**31)
    assert p.read_long() == 2**63 - 1
    assert p.read_float() == 1.5
    assert p.read_double() == math.pi
    assert p.read_bool() is True
    assert p.read_string() == "ünïcødé ✓"
    assert p.read_string() is None
    assert p.read_bytes() == b"\x00\xff"
    assert p.read_bytes() is None
    assert p.read_int_list() == [1, -2]
    assert p.read_long_list() == [2**40]
    assert p.read_float_list() == [0.25]
    assert p.read_double_list() == [1e300]
    assert p.read_bool_list() == [True, False]
    assert p.read_string_list() == ["a", None, ""]
    assert p.read_string_list() is None
    assert p.data_avail() == 0


def test_reading_the_wrong_type_or_past_the_end_is_bad_parcel() -> None:
    p = Parcel()
    p.write_int(7)
    roundtrip(p)
    with pytest.raises(BadParcel, match="found an int, not a long"):
        p.read_long()
    assert p.data_position() == 0  # a failed read consumes nothing
    assert p.read_int() == 7
    with pytest.raises(BadParcel, match="past the end"):
        p.read_int()
    with pytest.raises(BadParcel, match="a list of an int"):
        q = Parcel()
        q.write_int_list([1])
        roundtrip(q).read_long_list()


@pytest.mark.parametrize(
    ("raw", "reader", "message"),
    [
        (b"\x01\x00\x00", "read_int", "truncated"),
        (b"\x05\x02", "read_bool", "byte 2"),
        (b"\x06\xff\xff\xff\xff", "read_string", "declared"),
        (b"\x06\x02\x00\x00\x00\xc3\x28", "read_string", "utf-8"),
        (b"\x08\x10\x00\x00\x00abc", "read_bytes", "declared"),
        (b"\x0c\x01\xff\xff\xff\xff", "read_int_list", "fit"),
        (b"\x0c\x06\xff\xff\xff\x0f", "read_string_list", "cannot fit"),
        (b"\x0c\x05\x01\x00\x00\x00\x07", "read_bool_list", "not 0 or 1"),
        (b"\x09\x00\x00\x00\x00", "read_file_descriptor", "does not exist"),
        (b"\xee", "read_int", "unknown entry tag"),
    ],
)
def test_malformed_bytes_are_bad_parcel(raw: bytes, reader: str, message: str) -> None:
    with pytest.raises(BadParcel, match=message):
        getattr(Parcel.unmarshall(raw), reader)()


def test_a_huge_declared_count_allocates_nothing() -> None:
    raw = struct.pack("<BBI", 0x0C, 0x02, 0xFFFFFFFF)  # 4 billion longs in 6 bytes
    with pytest.raises(BadParcel, match="truncated"):
        Parcel.unmarshall(raw).read_long_list()


@pytest.mark.parametrize(
    ("method", "value", "error"),
    [
        ("write_int", 2**31, ValueError),
        ("write_int", "1", TypeError),
        ("write_long", -(2**63) - 1, ValueError),
        ("write_string", b"bytes", TypeError),
        ("write_bytes", 3, TypeError),
        ("write_int_list", [2**40], ValueError),
        ("write_string_list", [1], TypeError),
        ("write_shared_memory", 3, TypeError),
        ("write_binder", object(), TypeError),
        ("write_file_descriptor", -1, ValueError),
    ],
)
def test_bad_values_are_refused_when_written(method: str, value: Any, error: type) -> None:
    p = Parcel()
    with pytest.raises(error):
        getattr(p, method)(value)
    assert p.data_size() == 0


def test_positions() -> None:
    p = Parcel()
    p.write_int(1)
    p.write_int(2)
    assert (p.data_size(), p.data_position(), p.data_avail()) == (10, 10, 0)
    p.set_data_position(5)
    assert p.read_int() == 2
    with pytest.raises(ValueError):
        p.set_data_position(11)
    p.close()
    assert p.data_size() == 0


def test_writing_after_reading_appends() -> None:
    p = Parcel.unmarshall(b"\x01\x01\x00\x00\x00")
    assert p.read_int() == 1
    p.write_int(2)
    p.set_data_position(0)
    assert (p.read_int(), p.read_int()) == (1, 2)


def test_marshall_round_trip_and_refusal_with_descriptors(pipe: tuple[int, int]) -> None:
    p = Parcel()
    p.write_string("kept")
    q = Parcel.unmarshall(p.marshall())
    assert q.read_string() == "kept"
    p.write_file_descriptor(pipe[0])
    with pytest.raises(ValueError, match="descriptors"):
        p.marshall()
    p.close()


def test_a_parcel_is_not_picklable() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Parcel())


def test_large_bytes_are_kept_by_reference_and_spill() -> None:
    blob = os.urandom(1 << 20)
    p = Parcel()
    p.write_int(1)
    p.write_bytes(blob)
    p.write_int(2)
    out = p._outgoing()
    flags, parts, fds, spilled = out.flags, out.parts, out.fds, out.spill_fd
    try:
        assert flags == _wire.F_SPILLED and list(fds) == [spilled] and not parts
        assert any(part is blob for part in p._wire_parts()[0])  # no copy before sending
        received = Parcel._from_wire(
            _wire.pack(_wire.REPLY, flags, 1, 0, 0), _wire.HEADER_SIZE, [os.dup(spilled)], flags
        )
    finally:
        os.close(spilled)
    with received:
        assert received.read_int() == 1
        view = received.read_buffer()
        assert view is not None and view.readonly and bytes(view) == blob
        assert received.read_int() == 2
        view.release()
    roundtrip(p)
    assert (p.read_int(), p.read_bytes(), p.read_int()) == (1, blob, 2)


def test_only_sealed_regions_are_accepted_as_spilled_payloads(pipe: tuple[int, int]) -> None:
    with pytest.raises(BadParcel, match="not an ashmem region"):
        _wire.open_spilled(pipe[0])
    fd = ashmem.region.create_region("unsealed", 4096)  # size sealed, contents writable
    try:
        with pytest.raises(BadParcel, match="F_SEAL_WRITE"):
            _wire.open_spilled(fd)
    finally:
        os.close(fd)


# -- descriptors -------------------------------------------------------------------------------


def test_descriptor_ownership(pipe: tuple[int, int]) -> None:
    before = fd_count()
    r, w = pipe
    p = Parcel()
    p.write_file_descriptor(w)
    assert fd_count() == before + 1  # the Parcel's own dup
    os.write(w, b"1")  # and ours still works
    roundtrip(p)
    mine = p.read_file_descriptor()
    assert mine not in (w,) and os.get_inheritable(mine) is False  # a new CLOEXEC fd
    p.close()
    os.write(mine, b"2")  # closing the Parcel did not close what we took
    os.close(mine)
    assert os.read(r, 2) == b"12"
    assert fd_count() == before


def test_shared_memory_round_trip_and_non_regions(pipe: tuple[int, int]) -> None:
    before = fd_count()
    with ashmem.MemoryFile("parcel-region", 4096) as memory, Parcel() as p:
        memory.write_bytes(b"shared", 0, 0, 6)
        p.write_shared_memory(memory)
        p.write_file_descriptor(pipe[0])
        roundtrip(p)
        with p.read_shared_memory() as shm, shm.map_read_only() as mapping:
            assert bytes(mapping[:6]) == b"shared"
        with pytest.raises(BadParcel, match="found a file descriptor"):
            p.read_shared_memory()
    # A peer can claim anything is a region: the tag lies, the check does not.
    forged = Parcel._from_wire(b"\x0a\x00\x00\x00\x00", 0, [os.dup(pipe[0])])
    with forged, pytest.raises(BadParcel, match="not an ashmem region"):
        forged.read_shared_memory()
    assert fd_count() == before


def test_a_first_descriptor_is_the_same_as_a_later_one(pipe: tuple[int, int]) -> None:
    """An empty Parcel (new, or closed and written again) holds its first descriptor as it
    holds one that follows another value: the same entries, read back the same way."""
    before = fd_count()
    with ashmem.MemoryFile("first-fd", 4096) as memory, Parcel() as first, Parcel() as later:
        first.write_int(5)
        first.close()  # empty again
        first.write_shared_memory(memory)
        first.write_file_descriptor(pipe[0])
        first.write_int(6)
        later.write_int(5)
        later.write_shared_memory(memory)
        later.write_file_descriptor(pipe[0])
        later.write_int(6)
        assert first.data_size() == later.data_size() - 5
        assert len(first._wire_fds()) == len(later._wire_fds()) == 2
        roundtrip(first)
        with first.read_shared_memory() as got:
            assert got.size == 4096
        fd = first.read_file_descriptor()
        assert os.path.sameopenfile(fd, pipe[0])
        os.close(fd)
        assert first.read_int() == 6
    assert fd_count() == before


def test_descriptor_limit(pipe: tuple[int, int]) -> None:
    with Parcel() as p:
        for _ in range(MAX_PARCEL_FDS):
            p.write_file_descriptor(pipe[0])
        with pytest.raises(ValueError, match="at most"):
            p.write_file_descriptor(pipe[0])


def test_garbage_collection_closes_descriptors(pipe: tuple[int, int]) -> None:
    before = fd_count()
    p = Parcel()
    p.write_file_descriptor(pipe[0])
    del p
    assert fd_count() == before


# -- property tests ----------------------------------------------------------------------------

ints = st.integers(-(2**31), 2**31 - 1)
longs = st.integers(-(2**63), 2**63 - 1)
floats32 = st.floats(width=32, allow_nan=False)
doubles = st.floats(allow_nan=False)
texts = st.text(max_size=20)
values = st.one_of(
    st.tuples(st.just("int"), ints),
    st.tuples(st.just("long"), longs),
    st.tuples(st.just("float"), floats32),
    st.tuples(st.just("double"), doubles),
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(st.just("string"), st.none() | texts),
    st.tuples(st.just("bytes"), st.none() | st.binary(max_size=40)),
    st.tuples(st.just("int_list"), st.none() | st.lists(ints, max_size=5)),
    st.tuples(st.just("long_list"), st.none() | st.lists(longs, max_size=5)),
    st.tuples(st.just("float_list"), st.none() | st.lists(floats32, max_size=5)),
    st.tuples(st.just("double_list"), st.none() | st.lists(doubles, max_size=5)),
    st.tuples(st.just("bool_list"), st.none() | st.lists(st.booleans(), max_size=5)),
    st.tuples(st.just("string_list"), st.none() | st.lists(st.none() | texts, max_size=5)),
)


@settings(max_examples=800, deadline=None)
@given(st.lists(values, max_size=12))
def test_property_everything_written_reads_back(items: list[tuple[str, Any]]) -> None:
    p = Parcel()
    for kind, value in items:
        getattr(p, f"write_{kind}")(value)
    for parcel in (roundtrip(p), Parcel.unmarshall(p.marshall())):
        for kind, value in items:
            assert getattr(parcel, f"read_{kind}")() == value
        assert parcel.data_avail() == 0


def _corpus() -> list[bytes]:
    """Valid encodings of every entry type, alone and mixed: seeds for the mutations."""
    seeds: list[Parcel] = []
    for write, value in [
        ("write_int", -5),
        ("write_long", 2**40),
        ("write_float", 0.5),
        ("write_double", -1e10),
        ("write_bool", True),
        ("write_string", "ünï"),
        ("write_string", None),
        ("write_bytes", b"\x00" * 9),
        ("write_int_list", [1, 2, 3]),
        ("write_long_list", [7]),
        ("write_float_list", [1.0]),
        ("write_double_list", [2.0, 3.0]),
        ("write_bool_list", [True, False, True]),
        ("write_string_list", ["a", None, "bc"]),
    ]:
        p = Parcel()
        getattr(p, write)(value)
        seeds.append(p)
    fds = Parcel._from_wire(bytes.fromhex("09000000000a01000000"), 0, [])
    binder = Parcel.unmarshall(
        b"\x0b" + _wire.encode_reference(b"\0ashmem-binder-1-0123456789abcdef", b"t" * 16)
    )
    encodings = [p.marshall() for p in seeds] + [fds.marshall(), binder.marshall()]
    mixed = b"".join(encodings)
    return [*encodings, mixed, mixed[::-1]]


CORPUS = _corpus()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding, then damaged: bytes changed, cut, or spliced with noise."""
    raw = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["set", "cut", "insert"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "set" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at:]
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


READERS = [
    "read_int",
    "read_long",
    "read_float",
    "read_double",
    "read_bool",
    "read_string",
    "read_bytes",
    "read_buffer",
    "read_file_descriptor",
    "read_shared_memory",
    "read_binder",
    "read_int_list",
    "read_long_list",
    "read_float_list",
    "read_double_list",
    "read_bool_list",
    "read_string_list",
]


def _dispose(reader: str, value: Any) -> None:
    if reader == "read_file_descriptor":
        os.close(value)  # a new fd, ours to close
    elif isinstance(value, (ashmem.SharedMemory, Proxy)):
        value.close()
    elif isinstance(value, memoryview):
        value.release()


FUZZ_FDS: list[int] = []


def _fuzz_fds() -> list[int]:
    """Descriptors a fuzzed Parcel "received" (dups of a pipe end and of a region)."""
    return [os.dup(fd) for fd in FUZZ_FDS]


@pytest.fixture(scope="module", autouse=True)
def fuzz_descriptors() -> Iterator[None]:
    r, w = os.pipe()
    os.close(w)
    FUZZ_FDS.extend([r, ashmem.region.create_region("fuzz", 4096)])
    yield
    for fd in FUZZ_FDS:
        os.close(fd)
    FUZZ_FDS.clear()


@settings(
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=st.one_of(st.binary(max_size=96), mutated()), program=st.binary(max_size=16))
def test_property_untrusted_bytes_only_ever_raise_bad_parcel(raw: bytes, program: bytes) -> None:
    # Each program byte is one step: 0xF0.. moves the position, anything else is a read.
    before = fd_count()
    parcel = Parcel._from_wire(raw, 0, _fuzz_fds())
    reads: list[tuple[str, Callable[[], Any]]] = [(n, getattr(parcel, n)) for n in READERS]
    for step in program:
        if step >= 0xF0:
            parcel.set_data_position(min(step & 0x0F, parcel.data_size()))
            continue
        name, read = reads[step % len(reads)]
        with contextlib.suppress(BadParcel):
            _dispose(name, read())
    parcel.close()
    assert fd_count() == before


def test_only_the_parcel_module_touches_parcel_fields() -> None:
    # The transport's boundary with Parcel is _from_wire / _outgoing / _adopt / _wire_fds
    # (libbinder's ipcSetDataReference and ipcData/ipcObjects): no other binder module reads
    # or writes the fields those methods hide.
    import ast
    import pathlib

    import ashmem.binder

    fields = {
        name
        for name, value in vars(Parcel).items()
        if name.startswith("_")
        and not name.startswith("__")
        and not isinstance(value, (classmethod, staticmethod, property))
        and not callable(value)
    }
    fields |= {"_fds", "_binders", "_received", "_data"}
    package = pathlib.Path(ashmem.binder.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.name == "_parcel.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in fields:
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert "_buf" in fields and "_pos" in fields
    assert offenders == []


def test_with_block_runs_a_subclass_close() -> None:
    closed: list[int] = []

    class Logged(Parcel):
        def close(self) -> None:
            closed.append(self.data_size())
            super().close()

    with Logged() as p:
        p.write_int(7)
        size = p.data_size()
    assert closed == [size]
    with Parcel() as plain:  # the base class still closes on leaving the block
        plain.write_int(1)
    assert plain.data_size() == 0
