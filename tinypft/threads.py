"""How many threads tinypft's kernels use, for the whole process.

    import tinypft
    tinypft.set_num_threads(2)      # the fused kernels split their work over 2 threads
    tinypft.get_num_threads()       # -> 2
    with tinypft.threads.num_threads(1): ...    # one thread inside the block

The fused kernels (``engine/fused.py``) cut their work into independent pieces: the rows of a
GEMM's output, the sequences of an attention batch, the rows of an elementwise pass. ``parallel``
runs such pieces on a small pool of threads (the caller is one of them). NumPy releases the GIL
inside a ufunc's loop and inside BLAS, so the pieces really run at the same time.

``later`` starts pieces whose results nobody reads until ``wait_later()``: a pool thread takes them
when it is free while the caller goes on (``Linear``'s weight gradients, which nothing reads before
``Tensor.backward`` ends).

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
from typing import Any

from threadpoolctl import threadpool_info, threadpool_limits

Task = Callable[[], None]

_num_threads = 1  # tinypft's thread count (the caller plus _num_threads - 1 pool workers)
_workers: list[threading.Thread] = []
_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_inside = threading.local()  # .active: True on a thread running a task; .later: its jobs from later()


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
    """``body(item)`` for every item, taken one at a time by the caller and the woken workers.

    Bookkeeping is kept to C-level calls: ``next`` on two counters (atomic under the GIL: each item
    is taken once, and exactly one thread sees the last item finish) and a lock used as a latch,
    held from the start and released by whoever finishes the last item."""

    __slots__ = ("body", "items", "take", "finish", "latch", "error")

    def __init__(self, body: Callable[[Any], None], items: Sequence[Any]):
        self.body, self.items = body, items
        self.take = itertools.count().__next__  # index of the next item to run
        self.finish = itertools.count(1).__next__  # number of items finished, this one included
        self.latch = threading.Lock()
        self.latch.acquire()
        self.error: BaseException | None = None

    def work(self) -> None:
        n = len(self.items)
        i = self.take()
        while i < n:
            try:
                self.body(self.items[i])
            except BaseException as exc:  # handed to the caller, which raises it
                self.error = self.error or exc
            if self.finish() == n:
                self.items = ()  # let go of the tasks (and the arrays they hold) as soon as all are done
                self.latch.release()
            i = self.take()


def _work() -> None:
    """A pool worker: run jobs from the queue, forever (the thread is a daemon)."""
    _inside.active = True  # a task that calls parallel() runs its pieces itself
    while True:
        _jobs.get().work()


def _run(body: Callable[[Any], None], items: Sequence[Any]) -> None:
    """``body(item)`` for every item, on up to ``get_num_threads()`` threads (the caller included)."""
    helpers = min(_num_threads, len(items)) - 1
    if helpers <= 0 or getattr(_inside, "active", False):
        for item in items:
            body(item)
        return
    job = _Job(body, items)
    for _ in range(helpers):
        _jobs.put(job)
    _inside.active = True
    try:
        job.work()
    finally:
        _inside.active = False
    job.latch.acquire()  # every item has finished
    if job.error is not None:
        raise job.error


def _call(task: Task) -> None:
    task()


def parallel(tasks: Sequence[Task]) -> None:
    """Run every task (a function of no arguments) once, on up to ``get_num_threads()`` threads.

    The tasks must be independent (each writes its own part of the results). The calling thread
    runs tasks too and returns when all are done; an exception raised by a task is raised here.
    A task that itself calls ``parallel`` runs its tasks on its own thread, in order.
    """
    _run(_call, tasks)


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
    _run(body, pieces(n, min_size))


# ----------------------------------------------------------------------------- work read later


def later(tasks: Sequence[Task]) -> None:
    """Start independent tasks whose results nobody reads before ``wait_later()``, and return at once.

    A pool thread takes them as soon as it is free, while the caller goes on with other work; the
    caller takes what is left when it reaches ``wait_later``. With one thread, or inside a task,
    they run now. The autograd engine uses this for weight gradients: ``Linear``'s backward starts
    dW and db this way, the next ops run meanwhile, and ``Tensor.backward`` calls ``wait_later``
    before it adds anything into a leaf's ``.grad``.
    """
    if _num_threads == 1 or getattr(_inside, "active", False) or not tasks:
        for task in tasks:
            task()
        return
    job = _Job(_call, tasks)
    _jobs.put(job)
    _started_later().append(job)


def wait_later() -> None:
    """Return once every task this thread started with ``later`` has finished (this thread runs the
    ones no pool thread has taken yet); raise the first exception one of them raised."""
    started = _started_later()
    error = None
    while started:
        job = started.pop(0)
        _inside.active = True
        try:
            job.work()
        finally:
            _inside.active = False
        job.latch.acquire()  # every task of the job has finished
        error = error or job.error
    if error is not None:
        raise error


def _started_later() -> list[_Job]:
    """The jobs this thread started with ``later`` and has not yet waited for."""
    started = getattr(_inside, "later", None)
    if started is None:
        started = _inside.later = []
    return started
