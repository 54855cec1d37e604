"""Process-wide settings that make CPU training faster; the ``uaal`` command and the benchmarks apply them.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc's defaults hand every block above
a (dynamic) threshold of at most 32 MiB straight back to the kernel when freed and trim the heap
whenever its free top exceeds 128 KiB, so each training step maps its activations afresh and pays
a page fault per 4 KiB page; the perturbed passes of kernel-noise training (which run while the
training graph holds its activations) pay it more often still. ``benchmarks/bench_training_step.py
--malloc default`` measures the difference. This is what
PyTorch's CPU performance guide gets by preloading jemalloc or tcmalloc, without another library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_applied = False


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse: blocks up to 32 MiB (glibc's largest
    mmap threshold) come from the heap, the heap grows 1 GiB at a time and is never trimmed.

    The process's resident memory then stays at its peak instead of shrinking between steps.
    Returns True when the settings are in effect (Linux with glibc), False elsewhere, where it
    changes nothing. Calling it again does nothing more.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. A trim threshold of -1 turns trimming off (mallopt(3)).
    _applied = all(
        mallopt(parameter, value) == 1
        for parameter, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TOP_PAD, 1 << 30), (_M_TRIM_THRESHOLD, -1))
    )
    return _applied
