"""numpy arrays in regions: made here, they travel between processes as a descriptor.

Needs numpy (``pip install 'ashmem[numpy]'``); the rest of ashmem does not.

An array made by ``empty``/``zeros``/``full``/``from_array``/``as_array``/
``share_read_only`` (and any view, slice, transpose or reshape of it) is *region-backed*:
pickled through multiprocessing (``Process`` arguments under spawn and forkserver, its
``Queue``/``Pipe``/``Pool``/``Manager`` proxies, ``concurrent.futures.ProcessPoolExecutor``)
or through ``ashmem.Queue``/``Pipe``/``Pool``, it goes as the region's descriptor plus offset,
shape, dtype and strides, and the receiver's array views the same pages: a write on one side
is visible on the other. Non-contiguous views go the same way (base region + offset and
strides): nothing is copied, whatever the layout. Under fork, arguments are not pickled at all
and the child's array is the parent's (the mapping is ``MAP_SHARED``).

Plain ``pickle.dumps`` of such an array copies its bytes, as for any array.

Lifetime: an array holds its mapping, and the mapping one descriptor of the region (one per
mapping, not per view); closing the ``SharedMemory`` you passed to ``as_array`` never leaves a
dangling pointer. The memory is freed when the last array in the last process is gone.

Read-only: ``share_read_only(a)`` write-protects the region (for good, for every holder):
receivers get ``writeable=False`` arrays that ``setflags(write=True)`` cannot change and whose
region cannot be mapped writable again; the sender's writable views that exist keep working,
as on Android. An array with ``writeable=False`` on a writable region also arrives read-only.

>>> import ashmem.numpy as anp
>>> a = anp.zeros((2, 3), dtype="int32")
>>> a[1] = 7
>>> anp.region_of(a[1:]) is anp.region_of(a)
True
>>> a.sum()
np.int64(21)
"""

from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING, Any, Literal

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - the test environment has numpy
    raise ImportError(
        "ashmem.numpy needs numpy: pip install 'ashmem[numpy]'", name=exc.name
    ) from exc

from . import _backing
from ._errors import ProtectionError
from ._reduction import queue_pickling, register
from ._shared_memory import Mapping, SharedMemory
from .region import PROT_READ, PROT_WRITE

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = [
    "as_array",
    "empty",
    "from_array",
    "full",
    "region_of",
    "share_read_only",
    "zeros",
]

_NAME = "ashmem.numpy"


def _dtype(dtype: DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(
            f"dtype {dt} holds Python objects, which cannot live in shared memory (they are "
            "pointers into one process); use a numeric or structured dtype, or send object "
            "arrays through a queue, which pickles them"
        )
    return dt


def _shape(shape: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    for dim in dims:
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"shape must be ints, got {type(dim).__name__} in {shape!r}")
        if dim < 0:
            raise ValueError(f"negative dimension {dim} in shape {shape!r}")
    return tuple(int(d) for d in dims)


def _order(order: str) -> Literal["C", "F"]:
    if order == "C":
        return "C"
    if order == "F":
        return "F"
    raise ValueError(f"order must be 'C' or 'F', not {order!r}")


def _map(shm: SharedMemory, writable: bool) -> Mapping:
    """Map the whole region and remember ``shm`` (taken) as its descriptor."""
    try:
        mapping = shm.map_read_write() if writable else shm.map_read_only()
    except BaseException:
        shm.close()
        raise
    _backing.remember(mapping, shm)
    return mapping


def empty(
    shape: int | tuple[int, ...] | list[int],
    dtype: DTypeLike = float,
    order: str = "C",
    *,
    name: str | None = None,
) -> NDArray[Any]:
    """A new region-backed array. Regions start zero-filled, so this is ``zeros``.

    ``name`` names the region for ``ashmem ls``. Object dtypes raise ``TypeError``.

    >>> import ashmem.numpy as anp
    >>> anp.empty((2, 2), "uint8").tolist()
    [[0, 0], [0, 0]]
    """
    dt = _dtype(dtype)
    dims = _shape(shape)
    nbytes = math.prod(dims) * dt.itemsize
    shm = SharedMemory.create(name or _NAME, max(nbytes, 1))
    mapping = _map(shm, True)
    out: NDArray[Any] = np.ndarray(dims, dt, buffer=mapping, order=_order(order))
    return out


def zeros(
    shape: int | tuple[int, ...] | list[int],
    dtype: DTypeLike = float,
    order: str = "C",
    *,
    name: str | None = None,
) -> NDArray[Any]:
    """A new region-backed array of zeros.

    >>> import ashmem.numpy as anp
    >>> anp.zeros(3).tolist()
    [0.0, 0.0, 0.0]
    """
    return empty(shape, dtype, order, name=name)


def full(
    shape: int | tuple[int, ...] | list[int],
    fill_value: Any,
    dtype: DTypeLike | None = None,
    order: str = "C",
    *,
    name: str | None = None,
) -> NDArray[Any]:
    """A new region-backed array filled with ``fill_value`` (dtype: that of
    ``numpy.array(fill_value)`` by default).

    >>> import ashmem.numpy as anp
    >>> anp.full(3, 1.5).tolist()
    [1.5, 1.5, 1.5]
    """
    a = empty(shape, np.array(fill_value).dtype if dtype is None else dtype, order, name=name)
    a[...] = fill_value
    return a


def from_array(a: ArrayLike, *, name: str | None = None) -> NDArray[Any]:
    """A region-backed copy of ``a`` (one copy), keeping Fortran order if ``a`` has it.

    >>> import numpy as np, ashmem.numpy as anp
    >>> b = anp.from_array(np.arange(4)); b.tolist(), anp.region_of(b) is not None
    ([0, 1, 2, 3], True)
    """
    src = np.asanyarray(a)
    order = "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
    out = empty(src.shape, src.dtype, order, name=name)
    out[...] = src
    return out


def as_array(
    shm: SharedMemory | Mapping,
    shape: int | tuple[int, ...] | list[int],
    dtype: DTypeLike = float,
    offset: int = 0,
    *,
    strides: tuple[int, ...] | None = None,
    order: str = "C",
) -> NDArray[Any]:
    """An array over an existing region, at byte ``offset``.

    With a ``SharedMemory`` (borrowed: this keeps its own duplicate descriptor, so closing
    ``shm`` afterwards is fine), the region is mapped read-write, or read-only if it is
    write-protected, and the array is region-backed. With a ``Mapping``, the array views it
    (read-only if the mapping is); it is region-backed only if the mapping was made here.

    >>> import ashmem, ashmem.numpy as anp
    >>> shm = ashmem.SharedMemory.create("frame", 4096)
    >>> a = anp.as_array(shm, (2, 4), "uint16", offset=16); shm.close()
    >>> a[0, 0] = 9; a.shape, int(a[0, 0])
    ((2, 4), 9)
    """
    dt = _dtype(dtype)
    dims = _shape(shape)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    if isinstance(shm, SharedMemory):
        writable = bool(shm.get_protect() & PROT_WRITE)
        mapping = _map(shm.dup(), writable)
    elif isinstance(shm, Mapping):
        mapping = shm
    else:
        raise TypeError(
            f"as_array expects an ashmem.SharedMemory or ashmem.Mapping, not {type(shm).__name__}"
        )
    need = offset + math.prod(dims) * dt.itemsize if strides is None else offset
    if strides is None and need > len(mapping):
        raise ValueError(
            f"an array of shape {dims} and dtype {dt} at offset {offset} needs {need} bytes; "
            f"the region has {len(mapping)}"
        )
    try:
        out: NDArray[Any] = np.ndarray(
            dims, dt, buffer=mapping, offset=offset, strides=strides, order=_order(order)
        )
        return out
    except TypeError as exc:  # numpy's "buffer is too small"
        raise ValueError(f"{exc} (region of {len(mapping)} bytes)") from exc


def _address(entry: list[Any], mapping: Mapping) -> int:
    if entry[1] is None:
        first = np.frombuffer(mapping, np.uint8, count=1)
        entry[1] = first.__array_interface__["data"][0]
    return int(entry[1])


def region_of(array: Any) -> SharedMemory | None:
    """The region behind a region-backed array (or any view of one), else None.

    The ``SharedMemory`` is borrowed from the array's mapping: do not close it (``dup()`` it
    to keep a descriptor of your own).

    >>> import numpy as np, ashmem.numpy as anp
    >>> anp.region_of(np.zeros(3)) is None
    True
    """
    found = _backing.find(array)
    if found is None:
        return None
    shm: SharedMemory = found[0][0]
    return shm


def share_read_only(a: ArrayLike) -> NDArray[Any]:
    """A read-only array on a write-protected region with the contents of ``a``.

    A region-backed ``a`` is not copied: its whole region is write-protected (for good, in
    every process; ``a`` and other writable views that already exist keep working). Anything
    else is copied into a new region first. The result views a read-only mapping: neither it
    nor any receiver's copy can be made writable (``setflags(write=True)`` raises
    ``ValueError``, ``region_of(r).map_read_write()`` raises ``ProtectionError``).

    >>> import numpy as np, ashmem.numpy as anp
    >>> r = anp.share_read_only(np.arange(3)); r.flags.writeable
    False
    """
    array: NDArray[Any] = np.asanyarray(a)
    if _backing.find(array) is None:
        return _sealed_array(array)
    found = _backing.find(array)
    assert found is not None
    entry, mapping = found
    shm: SharedMemory = entry[0]
    shm.set_protect(PROT_READ)
    # A view over a read-only mapping, not just a flag: setflags(write=True) fails here too.
    offset = array.__array_interface__["data"][0] - _address(entry, mapping) + mapping.offset
    view: NDArray[Any] = np.ndarray(
        array.shape, array.dtype, buffer=_map(shm.dup(), False), offset=offset,
        strides=array.strides,
    )  # fmt: skip
    return view


def _sealed_array(src: NDArray[Any]) -> NDArray[Any]:
    """A read-only region-backed copy of ``src``: written with ``pwrite`` and sealed before
    anything maps it (no writable mapping, no prefault: the cheapest one copy)."""
    _dtype(src.dtype)
    if src.flags.c_contiguous:
        flat, order = src, "C"
    elif src.flags.f_contiguous:
        flat, order = src.T, "F"
    else:
        src = np.ascontiguousarray(src)
        flat, order = src, "C"
    raw = flat.reshape(-1).view(np.uint8)
    with raw.data as data:
        shm = _backing.sealed_copy(data, _NAME)
    out: NDArray[Any] = np.ndarray(
        src.shape, src.dtype, buffer=_map(shm, False), order=_order(order)
    )
    return out


def _rebuild(
    shm: SharedMemory,
    offset: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    strides: tuple[int, ...],
    readonly: bool,
) -> NDArray[Any]:
    """Receiving end: map the region (taken) and view it. Validated by numpy's own bounds
    check of shape/strides/offset against the mapping."""
    if not isinstance(shm, SharedMemory):
        raise pickle.UnpicklingError(f"expected a region for an array, got {type(shm).__name__}")
    writable = not readonly
    if writable:
        try:
            mapping = shm.map_read_write()
        except ProtectionError:  # write-protected since it was sent: read-only it is
            writable = False
    if not writable:
        mapping = shm.map_read_only()
    _backing.remember(mapping, shm)
    array: NDArray[Any] = np.ndarray(
        shape, _dtype(dtype), buffer=mapping, offset=offset, strides=strides
    )
    if not writable:
        array.flags.writeable = False
    return array


def _reduce_region_array(array: NDArray[Any]) -> tuple[Any, ...] | None:
    found = _backing.find(array)
    if found is None or array.dtype.hasobject:
        return None
    entry, mapping = found
    shm: SharedMemory = entry[0]
    offset = array.__array_interface__["data"][0] - _address(entry, mapping) + mapping.offset
    readonly = not array.flags.writeable or mapping.readonly
    return (_rebuild, (shm, offset, array.shape, array.dtype, array.strides, readonly))


def _reduce_for_multiprocessing(array: NDArray[Any]) -> Any:
    reduced = _reduce_region_array(array)
    return reduced if reduced is not None else array.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def _reduce_for_queue(array: NDArray[Any]) -> Any:
    reduced = _reduce_region_array(array)
    if reduced is not None:
        return reduced
    threshold = getattr(queue_pickling, "threshold", None)
    if threshold is not None and array.nbytes < threshold:
        # Goes inline anyway: the protocol-4 reduce is rebuilt in C, where protocol 5's
        # in-band buffer goes through numpy's Python-level _frombuffer.
        return array.__reduce_ex__(4)
    return array.__reduce_ex__(5)


register(np.ndarray, _reduce_for_multiprocessing, queue_reducer=_reduce_for_queue)
