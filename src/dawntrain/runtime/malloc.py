"""Keep freed memory in the process (glibc): CPU training reuses its activations' pages.

A training step allocates and frees the same activation-sized blocks every time. glibc serves
large blocks with a fresh mmap and unmaps them on free (its adaptive threshold moves blocks to
the heap only up to 32 MiB; DavidNet's activations at batch 512 are up to 134 MB), so each step
faults every page of its activations in again: on 2 Xeon cores a bf16 ReLU over 134 MB took
62 ms into fresh pages against 16 ms into reused ones, and DavidNet trained 1.49x faster with
its pages kept, holding 0.9 GB more (docs/benchmarks.md). PyTorch's CUDA allocator caches
blocks for this reason; on CPU it leaves it to malloc. Intel's PyTorch tuning guide preloads
jemalloc or tcmalloc; raising glibc's mmap and trim thresholds with mallopt(3) gets the same
effect without a preload.

Other C libraries (macOS, musl) and a malloc the user chose (MALLOC_* variables, glibc.malloc
tunables, a preloaded jemalloc or tcmalloc) are left alone.

Reuse holds while nothing else lives among the freed blocks. A profiler that keeps a record of
every operator breaks it: its small allocations split the freed blocks, the next step's tensors
no longer fit there and grow the heap into fresh pages, and the zero-fills and first writes into
them take the time (a DavidNet step 1.5x slower under torch.profiler on Zen 4). `reserve_heap`
touches the pages the heap will grow into before such a step, so that it runs as it does
unwatched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_GLIBC_DEFAULT = 128 * 1024  # both thresholds' defaults (mallopt(3))
# Blocks below 1 GiB come from the heap (a DavidNet activation at batch 512 is 134 MB in bf16),
# and freed memory is never trimmed back to the OS while a run holds this setting.
_KEEP_MMAP_THRESHOLD = 1 << 30
_KEEP_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int
# reserve_heap's blocks stay under the mmap threshold (so they come from the heap), and together
# under the trim threshold: carved from the heap's free top and what it grows past it, they leave
# a free top of about their total when freed, which glibc keeps.
_MAX_BLOCK = _KEEP_MMAP_THRESHOLD - (1 << 20)
_MAX_RESERVE = _KEEP_TRIM_THRESHOLD - (64 << 20)


def _user_chose_malloc() -> bool:
    """MALLOC_* variables, glibc.malloc tunables or a preloaded allocator: the user's choice."""
    return (
        any(name.startswith("MALLOC_") for name in os.environ)
        or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
        or "malloc" in os.environ.get("LD_PRELOAD", "")  # jemalloc, tcmalloc, mimalloc
    )


def _glibc():
    if not sys.platform.startswith("linux") or _user_chose_malloc():
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _mallopt():
    libc = _glibc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory(keep: bool = True) -> bool:
    """Set glibc's thresholds so freed blocks stay for reuse (keep) or back to glibc's defaults.
    Returns whether the setting took effect (False off glibc or under user MALLOC_* settings)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    trim, mmap = (
        (_KEEP_TRIM_THRESHOLD, _KEEP_MMAP_THRESHOLD) if keep else (_GLIBC_DEFAULT, _GLIBC_DEFAULT)
    )
    return bool(mallopt(_M_TRIM_THRESHOLD, trim)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap))


@contextlib.contextmanager
def freed_memory_kept(keep: bool = True, cpu: bool = True) -> Iterator[bool]:
    """keep_freed_memory(keep) inside the block, glibc's defaults after it; yields whether it
    took effect. The process keeps the pages it grew to until it exits (glibc trims them only
    as later frees allow). cpu=False (training on a GPU, whose allocator caches its own blocks)
    leaves malloc alone."""
    took = keep_freed_memory(keep) if cpu else False
    try:
        yield took
    finally:
        if took and keep:
            keep_freed_memory(False)


def _available_memory() -> int:
    """Bytes the kernel can hand out without swapping (MemAvailable, which counts the page cache
    it would drop; free memory alone can be small on a machine that has read much)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def reserve_heap(nbytes: int = _MAX_BLOCK) -> int:
    """Make the next `nbytes` the heap may grow by resident: malloc them in blocks under the mmap
    threshold, touch every page, free them (glibc merges them into the heap's free top and, with
    freed memory kept, keeps the pages). Capped at a quarter of the available memory and at what
    glibc keeps (just under 2 GiB: a batch of 2000 on airbench94_muon's network needs more than
    one block). Returns the bytes reserved (0 off glibc or under a malloc the user chose). Call
    it with freed memory kept."""
    libc = _glibc()
    if libc is None:
        return 0
    nbytes = min(nbytes, _MAX_RESERVE, _available_memory() // 4)
    libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
    # All blocks are held before any is freed, so that each extends the heap past the last.
    blocks, reserved = [], 0
    while reserved < nbytes:
        size = min(_MAX_BLOCK, nbytes - reserved)
        block = libc.malloc(size)
        if not block:
            break
        ctypes.memset(block, 0, size)
        blocks.append(block)
        reserved += size
    for block in blocks:
        libc.free(block)
    return reserved
