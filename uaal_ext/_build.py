"""What this build of uaal_ext contains, as compiled into the loaded library."""

from __future__ import annotations

import torch

from . import _C

__all__ = ["build_info"]


def _split(csv: str) -> list[str]:
    return [item for item in csv.split(",") if item]


def build_info() -> dict:
    """Describes the extension that was loaded.

    Keys: ``version``; ``cpu`` (always True); ``cpu_capabilities`` (instruction sets the CPU kernels
    were compiled for) and ``cpu_capability`` (the one torch, and so uaal_ext, uses on this machine);
    ``cuda`` (CUDA kernels compiled in), ``cuda_archs`` (e.g. ``["sm_80", "sm_90"]``),
    ``cuda_compiler_version``, ``cuda_available`` (CUDA kernels compiled and a GPU usable now);
    ``torch_version`` and ``torch_cuda_version`` the build was compiled against,
    ``torch_runtime_version`` imported now; ``build_type``.
    """
    config = _C.build_config()
    return {
        "version": config["version"],
        "cpu": True,
        "cpu_capabilities": _split(config["cpu_capabilities"]),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": bool(config["cuda"]),
        "cuda_archs": _split(config["cuda_archs"]),
        "cuda_compiler_version": config["cuda_compiler_version"] or None,
        "cuda_available": bool(config["cuda"]) and torch.cuda.is_available(),
        "torch_version": config["torch_version"],
        "torch_cuda_version": config["torch_cuda_version"] or None,
        "torch_runtime_version": torch.__version__,
        "build_type": config["build_type"],
    }
