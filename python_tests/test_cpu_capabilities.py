"""Every CPU kernel table that was compiled (default, AVX2, AVX-512) computes the same results.

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
    perturbed = logits.detach() + 0.01 * torch.randn(3, *logits.shape, dtype=logits.dtype)
    perturbed[1, 0, 2] += 12.0  # a large shift: the plain-difference path of the statistics
    sigma, ns = uaal_ext.perturbation_statistics(logits.detach(), perturbed)
    noise = uaal_ext.kernel_noise([torch.randn(6, 3, 3, 3, dtype=logits.dtype), torch.randn(37, dtype=logits.dtype)],
                                  3, 0.05, seed=11, granularity="filter")
    out[name] = {"loss": loss.item(), "grad": grad.flatten().tolist(), "entropy": entropy.flatten().tolist(),
                 "sigma": sigma.flatten().tolist(), "ns": ns.flatten().tolist(),
                 "noise": torch.cat([n.flatten() for n in noise]).tolist()}
# Rows of 131 pixels hold full 64-pixel blocks (staging, streaming stores; channels-last: the
# per-instruction-set conversions and the pixel-major by-weight pass) and a partial one.
xw = torch.randn(2, 19, 2, 131).mul_(3)
yw = torch.randint(0, 19, (2, 2, 131))
yw[1, 0, 3:9] = 255
ww = torch.rand(19) + 0.2
for layout in ("contiguous", "channels_last"):
    xl = xw.contiguous(memory_format=getattr(torch, "contiguous_format" if layout == "contiguous" else layout))
    out[layout] = {"entropy": uaal_ext.pixel_entropy(xl, normalized=True).flatten().tolist()}
    for by_weight in (False, True):
        xg = xl.clone(memory_format=torch.preserve_format).requires_grad_()
        loss = uaal_ext.uaal_cross_entropy(xg, yw, weight=ww, ignore_index=255, alpha=1.0, label_smoothing=0.1,
                                           normalize_by_weight=by_weight)
        (grad,) = torch.autograd.grad(loss, xg)
        out[layout][f"loss by_weight={by_weight}"] = loss.item()
        out[layout][f"grad by_weight={by_weight}"] = grad.contiguous().flatten().tolist()
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
    for layout in ("contiguous", "channels_last"):
        for key, value in best[layout].items():
            # The gradient of a mean over ~1000 pixels is ~1e-3 and below: compared relatively.
            torch.testing.assert_close(
                torch.tensor(child[layout][key], dtype=torch.float64),
                torch.tensor(value, dtype=torch.float64),
                rtol=2e-5,
                atol=1e-9 if key.startswith("grad") else 2e-5,
                msg=lambda m, layout=layout, key=key: f"{capability} vs {best['capability']} ({layout} {key}): {m}",
            )
    for dtype, tol in (("float32", 2e-5), ("float64", 1e-12)):
        for key in ("loss", "grad", "entropy", "sigma", "ns", "noise"):
            # The noise is float32 for every dtype, and log/sin/cos may differ in the last bit
            # between the vector libraries of the instruction sets.
            key_tol = 1e-5 if key == "noise" else tol
            torch.testing.assert_close(
                torch.tensor(child[dtype][key], dtype=torch.float64),
                torch.tensor(best[dtype][key], dtype=torch.float64),
                rtol=key_tol,
                atol=key_tol,
                msg=lambda m, dtype=dtype, key=key: f"{capability} vs {best['capability']} ({dtype} {key}): {m}",
            )
