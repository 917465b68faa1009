"""Fixed glibc heap thresholds for a process that moves large, short-lived buffers.

Every chunk of an upload is a new 256 KiB bytes object, freed a moment later.  glibc adjusts its
mmap and trim thresholds as it goes; in one of the states it settles in, it gives the top of the
heap back to the kernel after nearly every chunk and takes it back for the next one (a ``brk``
per chunk), and the kernel zeroes and maps those pages again each time.  Measured with the bench
(3 runs each way, 512 MiB PUTs): the daemon's system time per GiB uploaded was 0.35-0.85 s with
the adaptive thresholds and 0.39-0.41 s with the fixed ones below.

The peak resident memory does not change: memory kept at the top of the heap is memory the
process already had at its peak.

glibc also gives each thread that allocates while another holds the lock an arena of its own (up
to eight per core), each with its own free memory.  The database and disk threads allocate little
and briefly; two arenas for the process left the peak after the bench's small-object load 0.2-1.0
MiB lower (4 runs each way) at the same request rates.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["ARENA_MAX", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "steady_heap"]

#: ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Allocations below this come from the heap (every buffer of the data path, joins included).
MMAP_THRESHOLD = 4 << 20
#: Free memory at the top of the heap kept for reuse before any is given back.
TRIM_THRESHOLD = 32 << 20
#: Heaps (arenas) the process's threads share.
ARENA_MAX = 2


def steady_heap() -> bool:
    """Fix the thresholds and the arena count; ``False`` where the C library has no
    ``mallopt`` (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Setting either threshold also turns glibc's adjustment of both off.
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_ARENA_MAX, ARENA_MAX),
    )
    # A list, not a generator: every setting is applied even when an earlier one is refused.
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])
