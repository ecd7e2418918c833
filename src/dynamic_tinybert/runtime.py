"""The process the model runs in: which device it may use, how much memory it peaked at, how malloc behaves.

`keep_freed_memory` is opt-in. glibc's malloc serves blocks above its mmap threshold with fresh pages and
returns them on free(), and trims the heap top above its trim threshold, so a long batch job that allocates
and frees the same multi-megabyte activations every forward pass pays page faults for them each time.
Raising both thresholds lets freed blocks be reused, at the price of the process keeping its peak memory.
That suits one long batch job (`dtb eval`, `search`, `sweep`, `calibrate`, `bench`), which turn it on. It
does not suit a threaded server: every thread's arena would keep its own peak. `return_freed_memory` is the
opposite trade, for a job whose memory must not grow with its length (`dtb answer`). Loading a model never
changes either. The measurements behind them are in docs/experiments/malloc-tuning.md.

`dtb serve` takes neither trade. Its memory grew with the shapes it saw because two caches of compiled kernels
filled (`bound_kernel_caches` bounds them), and it keeps glibc's adaptive threshold, which reuses freed
activations (with the threshold fixed it answered fewer requests per second), handing what its heap holds back
whenever the load goes idle (`trim_heap`). The measurements are in docs/experiments/serve-under-load.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
import threading
import time

import torch

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit: larger blocks are always mmap()ed
TRIM_THRESHOLD = 2**30
MMAP_THRESHOLD_FIXED = 128 * 2**10  # glibc's initial threshold, before it adapts
KERNEL_CACHE_CAPACITY = 128  # compiled kernels kept per cache (oneDNN's and ideep's default: 1024 each)
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's, ideep's
TRIM_INTERVAL_S = 1.0

_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where the C library is not glibc."""
    global _kept
    if _kept is None:
        libc = _glibc()
        _kept = libc is not None and bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return _kept


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at its initial 128 KiB; False where the C library is not glibc.

    The opposite trade to `keep_freed_memory`, for a job that must stay flat however long it runs (`dtb
    answer`). By default glibc raises the threshold to the size of each mmapped block freed, so activations
    of ever new shapes (chunk after chunk of different questions) end up on a heap that fragments and grows
    with the number of chunks. Fixed, every block above it is mmapped and handed back on free(), at the
    price of the page faults `keep_freed_memory` saves (docs/experiments/malloc-tuning.md).
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_FIXED))


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> None:
    """Keep at most `capacity` compiled matmul kernels in each of oneDNN's and ideep's caches; call before the
    first forward pass.

    Both cache a kernel per input shape (bf16 and int8 matmuls on the CPU go through them), 1,024 each by
    default. A server's shapes are ever new (a batch's windows times its longest), so the caches fill with
    hundreds of MiB of kernels, and their entries, allocated among the activations, pin the heap. A kernel
    compiles quickly, and the shapes seen most stay cached (docs/experiments/serve-under-load.md). Both
    libraries read the capacity from the environment once, when their cache is first used, so it must be set
    before that; a capacity already set in the environment is kept.
    """
    for name in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))


_trim_lock = threading.Lock()
_last_trim = -float("inf")


def trim_heap(min_interval_s: float = TRIM_INTERVAL_S) -> bool:
    """Hand the free pages inside malloc's heaps back to the system, at most once per `min_interval_s`; True if
    it did. For a server whose load has just gone idle.

    glibc returns freed memory from the top of a heap only, so the free holes that activations of ever new
    shapes leave below live blocks stay resident, in every thread's arena. malloc_trim(0) releases every free
    page of every arena. It walks the free lists, which takes milliseconds, so it is rate-limited and left to
    moments when nothing waits for the model. False where the C library is not glibc.
    """
    global _last_trim
    libc = _glibc()
    if libc is None:
        return False
    with _trim_lock:
        now = time.monotonic()
        if now - _last_trim < min_interval_s:
            return False
        _last_trim = now
    libc.malloc_trim(0)
    return True


@functools.cache
def _glibc():
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        return ctypes.CDLL(ctypes.util.find_library("c"))
    return None


def check_device(device: str) -> bool:
    """Whether `device` is a GPU; a one-line error for a device this torch cannot use."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (cuda:N for one of several GPUs), got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch sees no CUDA GPU")
    return kind == "cuda"


def peak_rss_mib() -> float:
    """This process's peak resident memory.

    On Linux the kernel's VmHWM: a spawned child's ru_maxrss also counts its parent's memory at the fork.
    """
    if sys.platform == "linux":
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**10
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
