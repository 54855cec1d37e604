"""What this build of uaal_ext contains (written by CMakeLists.txt at configure time)."""
from __future__ import annotations

import torch

from . import _build_config as _config

__all__ = ["build_info"]


def build_info() -> dict:
    """Describes the compiled extension.

    Keys: ``version``; ``cpu`` (always True); ``cpu_capabilities`` (instruction sets the CPU kernels
    were compiled for) and ``cpu_capability`` (the one torch, and so uaal_ext, uses on this machine);
    ``cuda`` (CUDA kernels compiled), ``cuda_archs`` (e.g. ``["sm_80", "sm_90"]``),
    ``cuda_compiler_version``, ``cuda_available`` (a GPU is usable now); ``torch_version`` and
    ``torch_cuda_version`` the build was compiled against, ``torch_runtime_version`` imported now.
    """
    return {
        "version": _config.VERSION,
        "cpu": True,
        "cpu_capabilities": list(_config.CPU_CAPABILITIES),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": bool(_config.CUDA),
        "cuda_archs": list(_config.CUDA_ARCHS),
        "cuda_compiler_version": _config.CUDA_COMPILER_VERSION or None,
        "cuda_available": bool(_config.CUDA) and torch.cuda.is_available(),
        "torch_version": _config.TORCH_VERSION,
        "torch_cuda_version": _config.TORCH_CUDA_VERSION or None,
        "torch_runtime_version": torch.__version__,
        "build_type": _config.BUILD_TYPE,
    }
