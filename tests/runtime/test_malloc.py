"""train/malloc.py: with freed memory kept, each step's allocations reuse the last one's pages."""

import os
import subprocess
import sys

import pytest

from dawntrain.runtime.malloc import freed_memory_kept, keep_freed_memory, reserve_heap

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mallopt thresholds are glibc's (Linux)"
)

# Rounds that each allocate, fill and free blocks of the same sizes, as training steps do with
# activations; prints the minor page faults of the last rounds and the pages they touched.
# glibc's heap takes a few rounds to settle around PyTorch's 64-byte-aligned allocations. Blocks
# are above 32 MiB, the most that glibc's own adaptive threshold moves from mmap to the heap.
STEPS = """
import resource, sys, torch
from dawntrain.runtime.malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
sizes, rounds, last = [48 << 20, 40 << 20, 48 << 20], 12, 4
for i in range(rounds):
    if i == rounds - last:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty(n // 4).fill_(1.0) for n in sizes]
    del blocks
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults, last * sum(sizes) // 4096)
"""


# Blocks that stay alive, so that each grows the heap, as a step does when a profiler's records
# have split the blocks it freed (docs/benchmarks-log.md, 2026-12-05): fresh pages, unless
# reserve_heap made the next ones resident first ("reserve"). Prints their faults and pages.
GROWING_STEP = """
import resource, sys, torch
from dawntrain.runtime.malloc import keep_freed_memory, reserve_heap
assert keep_freed_memory()
sizes = [48 << 20, 40 << 20, 48 << 20]
if sys.argv[1] == "reserve":
    assert reserve_heap(256 << 20) == 256 << 20
if sys.argv[1] == "reserve-blocks":  # more than one block under the mmap threshold holds
    sizes = [600 << 20, 600 << 20]
    assert reserve_heap(1300 << 20) == 1300 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks = [torch.empty(n // 4).fill_(1.0) for n in sizes]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults, sum(sizes) // 4096)
"""


def child_page_faults(mode: str, script: str = STEPS) -> tuple[int, int]:
    """The page faults and pages `script` prints, run in a fresh process with `mode`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, env=env, check=True
    )
    faults, pages = map(int, out.stdout.split())
    return faults, pages


@glibc_only
def test_kept_memory_is_reused_without_faulting_pages_in_again():
    kept, pages = child_page_faults("keep")
    default, _ = child_page_faults("default")  # glibc mmaps and unmaps each block
    assert kept < pages // 20 and default > pages // 2


@glibc_only
def test_a_reserved_heap_grows_into_resident_pages():
    reserved, pages = child_page_faults("reserve", GROWING_STEP)
    fresh, _ = child_page_faults("none", GROWING_STEP)
    assert reserved < pages // 20 and fresh > pages // 2


@glibc_only
def test_a_reservation_past_the_mmap_threshold_takes_several_blocks():
    """1.2 GB of new tensors (a batch of 2000 needs about that much) after reserving 1.3 GB in
    blocks each under the 1 GiB mmap threshold: resident, not faulted in."""
    reserved, pages = child_page_faults("reserve-blocks", GROWING_STEP)
    assert reserved < pages // 20


@glibc_only
@pytest.mark.parametrize(
    "name, value",
    [
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_a_malloc_the_user_chose_is_left_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert keep_freed_memory() is False
    with freed_memory_kept() as took:
        assert not took
    assert reserve_heap() == 0


def test_a_gpu_run_leaves_malloc_alone():
    with freed_memory_kept(cpu=False) as took:
        assert not took
