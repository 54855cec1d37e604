"""Calls every op of uaal_ext once per dtype, layout and awkward size, for compute-sanitizer to watch.

Sizes are the ones kernels get wrong: an empty batch, a single pixel, and a pixel count that is no
multiple of any block (37 x 61), at C = 19 and C = 150, contiguous and channels-last logits, in
float32, float16, bfloat16 and float64. Channels-last logits take the CUDA kernels with a group of
lanes per pixel (8 lanes at C = 19, 32 at C = 150); C = 3 and C = 40 (4 and 16 lanes) add the other
group sizes, channels-last at 37 x 61 only. Each call's outputs are checked to be finite where they
should be, so a launch that wrote garbage fails here too; the sanitizer reports out-of-bounds
accesses and races. On the CPU the same calls run the CPU kernels (``scripts/gpu_check.sh --cpu-smoke``).

    compute-sanitizer --tool memcheck python scripts/gpu_kernel_sweep.py --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

import uaal_ext
from uaal_ext.ops import (
    aggregate_scores,
    kernel_noise,
    perturbation_statistics,
    pixel_entropy,
    pixel_score_map,
    uaal_cross_entropy,
)
from uaal_ext.ops.scores import AGGREGATIONS, MONTE_CARLO_KERNELS, PIXEL_SCORE_KERNELS

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SIZES = {"empty": (0, 5, 7), "one pixel": (1, 1, 1), "odd": (3, 37, 61)}  # (N, H, W)
CLASSES = (19, 150)
GROUP_CLASSES = (3, 40)  # channels-last only: the group sizes C = 19 and 150 do not reach
IGNORE = 255


def _logits(n, c, h, w, dtype, device, channels_last, generator):
    logits = torch.randn(n, c, h, w, generator=generator).mul_(3).to(device=device, dtype=dtype)
    return logits.contiguous(memory_format=torch.channels_last) if channels_last else logits


def _memory_format(logits):
    return torch.channels_last if logits.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _target(n, c, h, w, device, generator):
    target = torch.randint(0, c, (n, h, w), generator=generator)
    target[torch.rand(n, h, w, generator=generator) < 0.1] = IGNORE
    return target.to(device)


def _finite(name, *tensors):
    for tensor in tensors:
        if tensor.numel() and not bool(torch.isfinite(tensor.float()).all()):
            raise AssertionError(f"{name}: non-finite output")


def loss_calls(logits, target, generator):
    """The loss family: forward, backward, the fused forward-backward in its three modes, the entropy."""
    n, c, h, w = logits.shape
    uncertainty = torch.rand(n, h, w, generator=generator).to(logits.device)
    weight = torch.rand(c, generator=generator).add_(0.5).to(device=logits.device, dtype=logits.dtype)
    calls = 0
    for reduction, by_weight, given, smoothing in itertools.product(
        ("none", "mean", "sum"), (False, True), (None, uncertainty), (0.0, 0.1)
    ):
        x = logits.detach().clone().requires_grad_()
        loss = uaal_cross_entropy(
            x,
            target,
            given,
            weight=weight,
            ignore_index=IGNORE,
            reduction=reduction,
            label_smoothing=smoothing,
            alpha=1.0,
            normalize_by_weight=by_weight,
        )
        loss.sum().backward()  # "none": forward + backward ops; "mean"/"sum": the fused op (mode 0, 1, 2)
        if n * h * w:
            _finite(f"uaal_cross_entropy({reduction}, by_weight={by_weight})", x.grad)
        calls += 2
    # Class-probability targets (their own kernel, in both mappings): forward + backward ops and the
    # fused op, with the entropy and with a map.
    probabilities = torch.softmax(torch.randn(logits.shape, generator=generator).to(logits.device), dim=1)
    probabilities = probabilities.to(logits.dtype).contiguous(memory_format=_memory_format(logits))
    for reduction, given in itertools.product(("none", "mean"), (None, uncertainty)):
        x = logits.detach().clone().requires_grad_()
        loss = uaal_cross_entropy(x, probabilities, given, weight=weight, reduction=reduction, alpha=1.0)
        loss.sum().backward()
        if n * h * w:
            _finite(f"uaal_cross_entropy(probabilities, {reduction})", x.grad)
        calls += 2
    x = logits.detach().clone().requires_grad_()
    for normalized in (False, True):
        entropy = pixel_entropy(x, normalized)
        entropy.sum().backward()
        _finite("pixel_entropy", entropy, x.grad)
        calls += 2
    return calls


def score_calls(logits, generator):
    n, c, h, w = logits.shape
    calls = 0
    for method in PIXEL_SCORE_KERNELS:
        stacked = method in MONTE_CARLO_KERNELS
        inputs = torch.stack([logits, logits.flip(1)]) if stacked else logits  # (T, N, ...) for the MC scores
        scores = pixel_score_map(inputs, method)
        _finite(f"pixel_scores({method})", scores)
        valid = (torch.rand(n, h, w, generator=generator) < 0.7).to(logits.device)
        for reduction in AGGREGATIONS:
            _finite(f"aggregate_scores({reduction})", aggregate_scores(scores, valid, reduction, 0.1))
            calls += 1
        calls += 1
    perturbed = torch.stack([logits, logits * 0.5, logits.flip(1)])  # (K=3, N, C, H, W)
    _finite("perturbation_statistics", *perturbation_statistics(logits, perturbed))
    return calls + 1


def noise_calls(device, dtype, generator):
    shapes = [(7, 3, 3, 3), (5,), (129, 67), (1, 1)]  # conv, norm, linear, a single element
    weights = [torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for shape in shapes]
    for per_filter in (False, True):
        _finite(
            "kernel_noise",
            *kernel_noise(weights, 3, 0.01, seed=5, offset=2, granularity="filter" if per_filter else "tensor"),
        )
    return 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="float32 only (for the slower racecheck)")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    dtypes = DTYPES[:1] if args.quick else DTYPES
    started, calls = time.perf_counter(), 0
    cases = list(itertools.product(dtypes, CLASSES, SIZES.items(), (False, True)))
    cases += list(itertools.product(dtypes, GROUP_CLASSES, [("odd", SIZES["odd"])], (True,)))
    for dtype, c, (size_name, (n, h, w)), channels_last in cases:
        case = f"{dtype}, C={c}, {size_name}, {'channels-last' if channels_last else 'contiguous'}"
        try:
            logits = _logits(n, c, h, w, dtype, device, channels_last, generator)
            target = _target(n, c, h, w, device, generator)
            calls += loss_calls(logits, target, generator) + score_calls(logits, generator)
            if device.type == "cuda":
                torch.cuda.synchronize()  # a fault is reported at the case that caused it
        except Exception as error:
            raise AssertionError(f"{case}: {type(error).__name__}: {error}") from error
    for dtype in dtypes:
        calls += noise_calls(device, dtype, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(
        f"gpu_kernel_sweep: {calls} op calls on {device} ({len(dtypes)} dtypes, C in {CLASSES}, sizes "
        f"{list(SIZES)}, contiguous and channels-last; channels-last C in {GROUP_CLASSES}) passed in "
        f"{time.perf_counter() - started:.1f} s; "
        f"kernels built: {uaal_ext.build_info()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
