"""Normalise a large array in place, chunk by chunk, with a pool of worker processes.

The array lives in a region (ashmem.numpy), so each task gets a view of its chunk: nothing
is pickled but a descriptor and the chunk's offset, and the workers' writes land in the
parent's array.

    python examples/pool_normalize.py [N]      # N float64 values (default 64 Mi = 512 MiB)
"""

from __future__ import annotations

import sys

import numpy as np

import ashmem
import ashmem.numpy as anp


def normalise(chunk: np.ndarray, mean: float, std: float) -> None:
    chunk -= mean  # a view of the parent's region: changed in place
    chunk /= std


def main(n: int) -> None:
    data = anp.from_array(np.random.default_rng(0).normal(5.0, 2.0, n))
    mean, std = float(data.mean()), float(data.std())
    chunks = np.array_split(data, 8)  # views of the same region
    with ashmem.Pool(4) as pool:
        pool.starmap(normalise, [(chunk, mean, std) for chunk in chunks])
    print(f"{n} values: mean {data.mean():+.3f}, std {data.std():.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64 << 20)
