"""Allocator tuning: keep glibc from returning big temporaries to the kernel after every use.

A training step allocates and frees the same large arrays (activations, gradients, GEMM outputs of a
few MB) over and over. glibc's ``malloc`` serves a request above ``M_MMAP_THRESHOLD`` (128 KiB at
start; it adapts upwards, but only up to 32 MiB and only after a free) with a fresh ``mmap`` and
gives it back with ``munmap`` on ``free``. The next step's array of the same size then starts on
untouched pages, and every 4 KiB page costs a page fault (the kernel zeroes it) on first write: for
a few hundred MB per step that is a noticeable share of the step. Likewise, memory freed at the top
of the heap is returned (``M_TRIM_THRESHOLD``) and faulted in again.

``tune_malloc`` raises both thresholds, so arrays up to 32 MiB (the largest mmap threshold that
every glibc accepts on 64-bit systems; the bench's arrays are a few MB) come from the heap, and
freed memory stays mapped for the next step's arrays. The cost is memory that stays resident after
a peak (not more peak memory). On anything but glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# <malloc.h>: the mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # 32 MiB: older glibc versions refuse more on 64-bit systems
TRIM_THRESHOLD = 1 << 30  # 1 GiB: keep up to that much freed memory mapped at the top of the heap

_tuned: bool | None = None


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes); True if glibc accepted both.

    Safe to call more than once and on any platform: without glibc it returns False and changes
    nothing. It affects the whole process (NumPy's arrays and everything else that uses malloc), so
    the commands that train or time training call it (``tinypft bench``); a library import never does.
    """
    global _tuned
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _tuned = False
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _tuned = False
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    int_max = 2**31 - 1  # mallopt takes a C int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, min(int(mmap_threshold), int_max)) == 1
    trim_ok = mallopt(M_TRIM_THRESHOLD, min(int(trim_threshold), int_max)) == 1
    _tuned = mmap_ok and trim_ok
    return _tuned


def malloc_tuned() -> bool | None:
    """What the last ``tune_malloc`` call returned (None if it was never called)."""
    return _tuned
