"""Shared fixtures for the uaal_ext tests."""

import os
import zlib

import pytest
import torch


@pytest.fixture
def seed(request):
    """A per-test seed: derived from the test's node id so every test draws different data.

    Set UAAL_TEST_SEED to shift all seeds and draw fresh inputs; the seed is printed, so pytest
    shows it with a failure's captured output and the failing case can be replayed.
    """
    base = int(os.environ.get("UAAL_TEST_SEED", "0"))
    value = (zlib.crc32(request.node.nodeid.encode()) + base) % 2**31
    torch.manual_seed(value)
    print(f"seed={value} (UAAL_TEST_SEED={base})")
    return value


def _needs_a_gpu(item) -> bool:
    """Whether a test is skipped here for want of CUDA (a cuda device parameter, a CUDA-only mark)."""
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", ""))
        if "CUDA" in reason or "GPU" in reason:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    # `pytest -m cuda` selects every test that needs a GPU: what scripts/gpu_check.sh runs there.
    for item in items:
        if _needs_a_gpu(item):
            item.add_marker(pytest.mark.cuda)
