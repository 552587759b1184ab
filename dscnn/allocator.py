"""The CPU heap setting that timing and training both need (glibc's malloc thresholds)."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def pin_malloc() -> bool:
    """Keep freed blocks of up to 32 MB on glibc's heap; False where libc is not glibc.

    Without this, glibc returns large activation buffers to the OS after every forward pass and
    page-faults them back in on the next one, so the same graph timed in two processes can differ
    by 2-4x depending on heap history, and a CPU training step pays those faults every step (a
    dscnn_t0 step at 32 px, batch 64, 1 thread: about 20% slower, issue 12). Process-wide and
    idempotent; it changes speed and resident memory, never results.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter codes
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
