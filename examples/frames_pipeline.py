"""A producer/consumer pipeline of image-sized frames through ashmem.Queue.

The producer makes ordinary numpy frames (480x640 RGB, 900 KiB each); each one is copied
once into a write-protected region and the consumer gets a read-only view of it, instead of
pickling it through a pipe. Results go back on a second queue.

    python examples/frames_pipeline.py [FRAMES]     # default 200
"""

from __future__ import annotations

import sys

import numpy as np

import ashmem


def produce(frames: ashmem.Queue, count: int) -> None:
    rng = np.random.default_rng(1)
    for index in range(count):
        frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        frames.put((index, frame))
    frames.put(None)


def consume(frames: ashmem.Queue, results: ashmem.Queue) -> None:
    while (item := frames.get()) is not None:
        index, frame = item  # a read-only view of a region: no copy made here
        results.put((index, float(frame.mean())))
    results.put(None)


def main(count: int) -> None:
    import multiprocessing

    frames, results = ashmem.Queue(maxsize=8), ashmem.Queue()
    workers = [
        multiprocessing.Process(target=produce, args=(frames, count)),
        multiprocessing.Process(target=consume, args=(frames, results)),
    ]
    for worker in workers:
        worker.start()
    brightness = []
    while (result := results.get()) is not None:
        brightness.append(result[1])
    for worker in workers:
        worker.join()
    print(f"{len(brightness)} frames, mean brightness {np.mean(brightness):.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
