"""Overlapping the stages of a frame pipeline: a bounded producer thread and an ordered thread map.

Both are used by ``featbench align`` (decode -> detect -> warp -> write) and ``featbench
predict`` (decode -> detect -> warp -> encode -> classify). OpenCV's decoder, dlib's detector
and torch's kernels release the GIL, so on two cores a stage in a background thread really
runs beside the main thread's work. Every queue is bounded: frames are big, and a long video
must stream in constant memory.
"""

import collections
import queue
import threading

_DONE = object()


def in_background(iterable, *, maxsize=64, name="featbench-background"):
    """Yield the items of ``iterable``, produced ahead of the consumer in a daemon thread.

    Parameters
    ----------
    iterable : iterable
        Consumed in the background thread only.
    maxsize : int
        Items produced ahead at most (the memory bound).
    name : str
        The thread's name.

    Yields
    ------
    The items of ``iterable``, in order. An exception raised by the producer is raised here,
    in the consumer. When the consumer stops early (break, error, close), the producer stops
    at its next item.
    """
    q = queue.Queue(maxsize=max(1, int(maxsize)))
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((True, _DONE))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((False, exc))

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)


def ordered_map(fn, items, *, threads=2, depth=None):
    """Yield ``fn(item)`` for each of ``items`` in order, up to ``depth`` computed at once.

    Parameters
    ----------
    fn : callable
        Run in worker threads (useful when it releases the GIL: dlib, OpenCV).
    items : iterable
    threads : int
        Worker threads; 1 (or less) calls ``fn`` inline.
    depth : int, optional
        Items in flight at most (default ``4 * threads``): bounded, since items are frames.
    """
    if threads <= 1:
        return (fn(item) for item in items)
    return read_ahead(fn, items, threads=threads, depth=depth or 4 * threads)


def read_ahead(fn, items, *, threads=1, depth=None):
    """Yield ``fn(item)`` for each of ``items`` in order, computed ahead in ``threads`` threads.

    The one read-ahead of featbench (faces for training, extraction and predict:
    :class:`featbench.core.facesource.FaceSource`). ``fn`` must depend on its item alone, so
    the results are the same for any ``threads``; numpy, OpenCV and HDF5 decompression release
    the GIL, so the threads overlap the consumer's work.

    Parameters
    ----------
    fn : callable
    items : iterable
    threads : int
        Worker threads; 0 calls ``fn`` inline (no read-ahead).
    depth : int, optional
        Items in flight at most (default ``threads + 1``).
    """
    if threads < 1:
        return (fn(item) for item in items)
    return _pooled(fn, items, int(threads), max(1, int(depth or threads + 1)))


def _pooled(fn, items, threads, depth):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="featbench-map") as pool:
        pending = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
