"""How many threads tinypft's kernels use, for the whole process.

    import tinypft
    tinypft.set_num_threads(2)      # the fused kernels split their work over 2 threads
    tinypft.get_num_threads()       # -> 2
    with tinypft.threads.num_threads(1): ...    # one thread inside the block

The fused kernels (``engine/fused.py``) cut their work into independent pieces: the rows of a
GEMM's output, the sequences of an attention batch, the rows of an elementwise pass. ``parallel``
runs such pieces on a small pool of threads (the caller is one of them). NumPy releases the GIL
inside a ufunc's loop and inside BLAS, so the pieces really run at the same time.

BLAS itself is kept at one thread (set through ``threadpoolctl``, which finds the BLAS libraries
loaded in the process and calls their own ``set_num_threads``). The model's GEMMs are small
(1888 x 128 @ 128 x 512): BLAS's own threads split such a product finely and then spin while they
wait for each other, and when the other core is busy the whole product waits for the late share.
Two row halves computed by two single-threaded BLAS calls keep each core on a product large
enough to run at full speed, and a late half only delays its own half.

Results do not depend on the count: a piece is a block of output rows (or of whole sequences, or
of columns of a column sum), computed by the same arithmetic in the same order as the whole.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence

from threadpoolctl import threadpool_info, threadpool_limits

Task = Callable[[], None]

_num_threads = 1  # tinypft's thread count (the caller plus _num_threads - 1 pool workers)
_workers: list[threading.Thread] = []
_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_inside = threading.local()  # .active is True on a thread that is running a task


def _blas_pools() -> list[dict]:
    """threadpoolctl's description of every BLAS library loaded in the process."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that it is found)

    return [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]


def _check(name: str, n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name}: n must be a positive integer, got {n!r}")


def set_num_threads(n: int) -> None:
    """Let tinypft's kernels use ``n`` threads (n >= 1) from now on; BLAS runs one thread per call."""
    global _num_threads
    _check("set_num_threads", n)
    threadpool_limits(limits=1, user_api="blas")
    _num_threads = n
    while len(_workers) < n - 1:  # workers are started once and kept (idle ones wait on the queue)
        worker = threading.Thread(target=_work, name=f"tinypft-{len(_workers) + 1}", daemon=True)
        worker.start()
        _workers.append(worker)


def get_num_threads() -> int:
    """The number of threads tinypft's kernels use now."""
    return _num_threads


def get_blas_threads() -> int:
    """The number of threads NumPy's BLAS uses now (the first BLAS found when NumPy's is not told apart)."""
    pools = _blas_pools()
    if not pools:
        return 1
    numpy_pools = [p for p in pools if "numpy" in str(p.get("filepath", ""))]
    return int((numpy_pools or pools)[0]["num_threads"])


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """``with num_threads(2): ...`` uses ``n`` threads inside the block, then restores the count."""
    _check("num_threads", n)
    previous = _num_threads
    with threadpool_limits(limits=1, user_api="blas"):
        set_num_threads(n)
        try:
            yield
        finally:
            set_num_threads(previous)


# ----------------------------------------------------------------------------- running pieces


class _Job:
    """A list of tasks that the caller and the woken workers take one at a time until none is left."""

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = tasks
        self.next = itertools.count()  # next(...) is atomic under the GIL: each task is taken once
        self.remaining = len(tasks)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        _inside.active = True
        try:
            for i in iter(self.next.__next__, None):
                if i >= len(self.tasks):
                    return
                try:
                    self.tasks[i]()
                except BaseException as exc:  # handed to the caller, which raises it
                    self.error = self.error or exc
                with self.lock:
                    self.remaining -= 1
                    if self.remaining == 0:
                        self.done.set()
        finally:
            _inside.active = False


def _work() -> None:
    """A pool worker: run jobs from the queue, forever (the thread is a daemon)."""
    while True:
        _jobs.get().work()


def parallel(tasks: Sequence[Task]) -> None:
    """Run every task (a function of no arguments) once, on up to ``get_num_threads()`` threads.

    The tasks must be independent (each writes its own part of the results). The calling thread
    runs tasks too and returns when all are done; an exception raised by a task is raised here.
    A task that itself calls ``parallel`` runs its tasks on its own thread, in order.
    """
    helpers = min(_num_threads, len(tasks)) - 1
    if helpers <= 0 or getattr(_inside, "active", False):
        for task in tasks:
            task()
        return
    job = _Job(tasks)
    for _ in range(helpers):
        _jobs.put(job)
    job.work()
    job.done.wait()
    if job.error is not None:
        raise job.error


def pieces(n: int, min_size: int = 1, share: int = 1) -> list[slice]:
    """[0, n) cut into contiguous slices of nearly equal size, one per thread (one per ``share``
    threads, rounded up, when ``share`` independent jobs are cut at once), fewer so that each has
    at least ``min_size`` items: one slice when n is small."""
    count = max(1, min(-(-_num_threads // share), n // max(min_size, 1)))
    bounds = [n * i // count for i in range(count + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(count)]


def parallel_for(n: int, body: Callable[[slice], None], min_size: int = 1) -> None:
    """``body(s)`` for each slice s of ``pieces(n, min_size)``, in parallel (``body(slice(0, n))`` at
    once, with no more overhead than the call, when there is only one piece)."""
    if _num_threads == 1 or n < 2 * min_size:
        body(slice(0, n))
        return
    parallel([lambda s=s: body(s) for s in pieces(n, min_size)])
