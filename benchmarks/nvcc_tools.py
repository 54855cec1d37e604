"""Where nvcc, cuobjdump and the extension build's nvcc flags are found: the tool side of
`cuda_kernel_report.py` (and of any script that compiles the CUDA sources outside CMake)."""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "default_archs",
    "find_nvcc",
    "toolkit_bin",
    "find_cuobjdump",
    "torch_flags",
    "flags_from_cmakelists",
    "flags_from_build",
]


def default_archs() -> str:
    """TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX") when set, as the build uses it; else 80,90."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not env:
        return "80,90"
    archs = []
    for item in re.split(r"[;\s]+", env):
        m = re.fullmatch(r"(\d+)\.(\d+[af]?)(\+PTX)?", item)
        if m:
            archs.append(m.group(1) + m.group(2))
    return ",".join(archs) or "80,90"


def find_nvcc(explicit: str | None) -> str:
    nvcc = explicit or shutil.which("nvcc")
    if not nvcc:
        for cand in sorted(glob.glob("/usr/local/cuda*/bin/nvcc")):
            nvcc = cand
    if not nvcc:
        sys.exit("error: nvcc not found (PATH, /usr/local/cuda*/bin); pass --nvcc")
    return nvcc


def toolkit_bin(nvcc: str) -> Path | None:
    """The toolkit's bin dir; nvcc on PATH may be a wrapper script that execs the real one."""
    path = Path(nvcc).resolve()
    try:
        text = path.read_text(errors="replace")[:4096]
        m = re.search(r"exec\s+(\S+/nvcc)\b", text)
        if m:
            path = Path(m.group(1)).resolve()
    except OSError:
        pass
    return path.parent if path.parent.name == "bin" else None


def find_cuobjdump(nvcc: str) -> str | None:
    cands = [shutil.which("cuobjdump")]
    tk = toolkit_bin(nvcc)
    if tk:
        cands.append(str(tk / "cuobjdump"))
    try:
        import triton  # noqa: F401  (torch's dependency ships a cuobjdump)

        cands.append(str(Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.access(c, os.X_OK)), None)


def torch_flags() -> tuple[list[str], str]:
    """Include dirs and ABI define the way CMakeLists.txt asks torch for them."""
    import logging

    import torch

    # Its import warns when no CUDA runtime is found; we only want the include paths.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import torch.utils.cpp_extension as ext

    incs = [p for p in ext.include_paths() if os.path.isdir(p)]
    return [f"-I{p}" for p in incs], f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"


def flags_from_cmakelists() -> list[str]:
    """nvcc flags rebuilt from CMakeLists.txt: its CUDA-only compile options, C++20, csrc/, torch."""
    text = (ROOT / "CMakeLists.txt").read_text() if (ROOT / "CMakeLists.txt").exists() else ""
    cuda_opts = []
    for m in re.finditer(r"\$<\$<COMPILE_LANGUAGE:CUDA>:([^>]*)>", text):
        cuda_opts += shlex.split(m.group(1))
    std = re.search(r"CMAKE_CUDA_STANDARD\s+(\d+)", text)
    incs, abi = torch_flags()
    flags = [
        f"-std=c++{std.group(1) if std else 20}",
        "-O3",
        "-DNDEBUG",
        "-Xcompiler=-fPIC",
        f"-I{ROOT / 'csrc'}",
        *incs,
        abi,
        "-DUAAL_WITH_CUDA=1",
    ]
    return flags + (cuda_opts or ["-O3", "--expt-relaxed-constexpr"])


_DROP_WITH_VALUE = {
    "-o",
    "-MT",
    "-MF",
    "-gencode",
    "-arch",
    "--gpu-architecture",
    "-code",
    "--gpu-code",
    "--generate-code",
    "-x",
    "-ccbin",
    "--compiler-bindir",
}
_DROP = {"-c", "-MD", "-MMD", "--compile", "-shared"}


def flags_from_build(source: Path) -> tuple[list[str], str, str, str] | None:
    """The exact nvcc command the CMake/ninja build uses for `source`, minus arch/output flags."""
    ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
    for build_ninja in sorted(glob.glob(str(ROOT / "build" / "*" / "build.ninja")), key=os.path.getmtime, reverse=True):
        build_dir = os.path.dirname(build_ninja)
        try:
            cmds = subprocess.run(
                [ninja, "-C", build_dir, "-t", "commands"], capture_output=True, text=True, timeout=60
            ).stdout.splitlines()
        except (OSError, subprocess.TimeoutExpired):
            continue
        rel = os.path.relpath(source, ROOT)
        for line in cmds:
            if "nvcc" not in line or rel not in line:
                continue
            try:
                tokens = shlex.split(line)
            except ValueError:
                continue
            parts, cur = [], []
            for tok in tokens + ["&&"]:
                if tok == "&&":
                    parts.append(cur)
                    cur = []
                else:
                    cur.append(tok)
            for toks in parts:
                if not toks or not toks[0].endswith("nvcc") or not any(t.endswith(rel) for t in toks):
                    continue
                out, skip = [], False
                for tok in toks[1:]:
                    if skip:
                        skip = False
                        continue
                    if tok in _DROP_WITH_VALUE:
                        skip = True
                        continue
                    if (
                        tok in _DROP
                        or tok.endswith(".cu")
                        or any(tok.startswith(p + "=") for p in _DROP_WITH_VALUE if p.startswith("--"))
                    ):
                        continue
                    out.append(tok)
                return out, toks[0], f"`{os.path.relpath(build_ninja, ROOT)}`", build_dir
    return None
