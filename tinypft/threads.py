"""How many threads NumPy's BLAS (OpenBLAS, MKL, ...) may use, for the whole process.

    import tinypft
    tinypft.set_num_threads(1)      # every later np.matmul runs on one BLAS thread
    tinypft.get_num_threads()       # -> 1

This model's matrices are small (128 x 512, batched 128 x 32 attention products). Splitting such a
GEMM over two threads saves little, and when the other core is busy the second thread's share
arrives late: the whole product waits for it, and a step can become several times slower. One
thread is the safer default for training on a laptop; ``tinypft bench --threads 1`` and
``--threads 2`` measure both. Results do not depend on the count beyond float rounding (a GEMM
split over threads sums in a different order).

The limit is applied through ``threadpoolctl`` (it finds the BLAS libraries loaded in the process
and calls their own ``set_num_threads``), so it takes effect at once, without environment
variables set before NumPy is imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_info, threadpool_limits


def _blas_pools() -> list[dict]:
    """threadpoolctl's description of every BLAS library loaded in the process."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that it is found)

    return [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]


def set_num_threads(n: int) -> None:
    """Let every BLAS library in the process use at most ``n`` threads (n >= 1), from now on."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """The number of threads NumPy's BLAS uses now (the first BLAS found when NumPy's is not told apart)."""
    pools = _blas_pools()
    if not pools:
        return 1
    numpy_pools = [p for p in pools if "numpy" in str(p.get("filepath", ""))]
    return int((numpy_pools or pools)[0]["num_threads"])


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """``with num_threads(1): ...`` limits BLAS to ``n`` threads inside the block, then restores."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_threads: n must be a positive integer, got {n!r}")
    with threadpool_limits(limits=n, user_api="blas"):
        yield
