"""Every CPU kernel table that was compiled (default, AVX2, AVX-512) computes the same loss.

The extension picks its kernels the way ATen does, honouring ATEN_CPU_CAPABILITY, which is read
once per process: so each instruction set runs in a subprocess of its own.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import uaal_ext

_CAPABILITY_ENV = {"DEFAULT": "default", "AVX2": "avx2", "AVX512": "avx512"}

_CHILD = r"""
import json, sys, torch, uaal_ext
torch.manual_seed(int(sys.argv[1]))
x = torch.randn(2, 7, 5, 37, dtype=torch.float32).mul_(3).requires_grad_()
y = torch.randint(0, 7, (2, 5, 37))
y[0, 1, :5] = 255
x64 = torch.randn(2, 7, 9, dtype=torch.float64).requires_grad_()
y64 = torch.randint(0, 7, (2, 9))
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for name, (logits, target) in {"float32": (x, y), "float64": (x64, y64)}.items():
    loss = uaal_ext.uaal_cross_entropy(logits, target, ignore_index=255, alpha=1.0, label_smoothing=0.1)
    (grad,) = torch.autograd.grad(loss, logits)
    entropy = uaal_ext.pixel_entropy(logits.detach(), normalized=True)
    out[name] = {"loss": loss.item(), "grad": grad.flatten().tolist(), "entropy": entropy.flatten().tolist()}
print(json.dumps(out))
"""


def _run(capability: str, seed: int) -> dict:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=_CAPABILITY_ENV[capability])
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(seed)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


_ORDER = ["DEFAULT", "AVX2", "AVX512"]


def _machine_supports(capability: str) -> bool:
    best = torch.backends.cpu.get_cpu_capability()
    return best in _ORDER and _ORDER.index(capability) <= _ORDER.index(best)


@pytest.mark.parametrize("capability", ["DEFAULT", "AVX2", "AVX512"])
def test_kernel_table_matches_the_best_one(capability, seed):
    if capability not in uaal_ext.build_info()["cpu_capabilities"]:
        pytest.skip(f"{capability} kernels were not compiled on this platform")
    if not _machine_supports(capability):
        pytest.skip(f"this CPU cannot run {capability} code")
    child = _run(capability, seed)
    assert child["capability"] == capability
    best = _run(torch.backends.cpu.get_cpu_capability(), seed)
    for dtype, tol in (("float32", 2e-5), ("float64", 1e-12)):
        for key in ("loss", "grad", "entropy"):
            torch.testing.assert_close(
                torch.tensor(child[dtype][key], dtype=torch.float64),
                torch.tensor(best[dtype][key], dtype=torch.float64),
                rtol=tol,
                atol=tol,
                msg=lambda m: f"{capability} vs {best['capability']} ({dtype} {key}): {m}",
            )
