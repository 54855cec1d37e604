"""uaal_ext.experiment.runtime.keep_freed_memory: glibc malloc settings for training processes."""

import platform
import subprocess
import sys

import pytest

# In a process of its own (the settings are process-wide): how many bytes glibc has mmapped
# while a 16 MiB torch tensor is alive, before and after keep_freed_memory, and what it returned.
_PROBE = """
import ctypes
import torch
from uaal_ext.experiment.runtime import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2

def mmapped_while_holding(nbytes):
    before = libc.mallinfo2().hblkhd
    x = torch.ones(nbytes, dtype=torch.uint8)
    held = libc.mallinfo2().hblkhd - before
    assert int(x.sum()) == nbytes
    return held

default = mmapped_while_holding(16 << 20)
first, second = keep_freed_memory(), keep_freed_memory()
kept = mmapped_while_holding(16 << 20)
print(default, kept, first, second)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc"
)
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    """glibc maps a fresh 16 MiB block (and unmaps it when freed, so the next one page-faults
    again); with freed memory kept it comes from the heap. A second call says the same."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout.split()
    default, kept, first, second = int(out[0]), int(out[1]), out[2], out[3]
    assert default >= 16 << 20
    assert kept == 0
    assert first == second == "True"
