"""The cases `bench_uncertainty.py` times: the eager baselines (the same math as plain PyTorch,
written as efficiently as it allows), the model and inputs, and part 3, KernelNoise inside a
training step. Kept apart from the driver so each file reads as one thing."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt_ms, load_note, parse_shape, run_rounds, time_call  # noqa: E402

ETA = 0.01  # relative noise size (paper: 0.01 ... 0.1)
SEED = 0
ENCODER = "tu-mobilenetv3_large_100"  # smp DeepLabV3+ encoder, random init
MODEL_CLASSES = 19
STATS_NOISE = 0.05  # perturbed logits = clean + STATS_NOISE * randn


# --------------------------------------------------------------------------------------------
# Baselines: the same math as plain eager PyTorch, written as efficiently as it allows.
# --------------------------------------------------------------------------------------------
def perturb_eager(w: torch.Tensor, n: torch.Tensor, eta: float, per_filter: bool) -> torch.Tensor:
    """``w + eta * ||w|| * n / ||n||`` for the K normals ``n`` (K, *w.shape); overwrites ``n``."""
    k = n.shape[0]
    if per_filter and w.dim() > 0:  # one norm per slice along dim 0 (an output filter)
        rows = w.shape[0]
        keep = (rows,) + (1,) * (w.dim() - 1)
        w_norm = torch.linalg.vector_norm(w.reshape(rows, -1), dim=1).view(keep)
        n_norm = torch.linalg.vector_norm(n.reshape(k, rows, -1), dim=2).view(k, *keep)
    else:
        w_norm = torch.linalg.vector_norm(w)
        n_norm = torch.linalg.vector_norm(n.reshape(k, -1), dim=1).view(k, *(1,) * w.dim())
    return n.mul_(w_norm * eta / n_norm).add_(w)


def kernel_noise_eager(weights: list[torch.Tensor], num_samples: int, eta: float, per_filter: bool):
    """One (K, *w.shape) perturbed stack per weight, from the global generator's normals."""
    return [
        perturb_eager(w, torch.randn((num_samples, *w.shape), dtype=w.dtype, device=w.device), eta, per_filter)
        for w in weights
    ]


def kernel_noise_fused(weights, num_samples: int, eta: float, per_filter: bool):
    from uaal_ext.ops.perturbation import kernel_noise

    return kernel_noise(
        weights, num_samples, eta, seed=SEED, offset=0, granularity="filter" if per_filter else "tensor"
    )


def perturbation_statistics_eager(clean: torch.Tensor, perturbed: torch.Tensor):
    """(sigma, ns): sigma = sqrt(mean_k d_k^2), ns = mean_k d_k / ||p||, d_k = ||softmax_k - softmax||."""
    p = torch.softmax(clean, dim=1)  # (N, C, *spatial)
    diff = torch.softmax(perturbed, dim=2).sub_(p)  # (K, N, C, *spatial): p_k - p, in place
    d = torch.linalg.vector_norm(diff, dim=2)  # (K, N, *spatial)
    sigma = d.square().mean(dim=0).sqrt()
    ns = d.mean(dim=0) / torch.linalg.vector_norm(p, dim=1)
    return sigma, ns


def perturbation_statistics_fused(clean, perturbed):
    from uaal_ext.ops.perturbation import perturbation_statistics

    return perturbation_statistics(clean, perturbed)


# --------------------------------------------------------------------------------------------
# Model, inputs and timing
# --------------------------------------------------------------------------------------------
def make_model():
    import segmentation_models_pytorch as smp

    torch.manual_seed(SEED)
    return smp.DeepLabV3Plus(ENCODER, encoder_weights=None, classes=MODEL_CLASSES)


def model_weights(model) -> list[torch.Tensor]:
    """The .weight of every conv/linear module, in named_parameters order (what KernelNoise perturbs)."""
    from torch.nn.modules.conv import _ConvNd

    chosen = {id(m.weight) for m in model.modules() if isinstance(m, (_ConvNd, torch.nn.Linear))}
    return [p.detach() for _, p in model.named_parameters() if id(p) in chosen]


def make_stats_inputs(shape, num_samples: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randn(shape, generator=gen).mul_(3.0)
    perturbed = torch.randn((num_samples, *shape), generator=gen).mul_(STATS_NOISE).add_(clean)
    return clean, perturbed


# --------------------------------------------------------------------------------------------
# Part 3: KernelNoise in a training step
# --------------------------------------------------------------------------------------------
def bench_step(args, model, log, notes) -> dict:
    from uaal_ext.uncertainty import KernelNoise

    ks = [int(k) for k in args.step_ks.split(",")]
    shape = parse_shape(args.image)
    gen = torch.Generator().manual_seed(SEED)
    images = torch.randn(shape, generator=gen)
    target = torch.randint(0, MODEL_CLASSES, (shape[0], *shape[2:]), generator=gen)
    model.train()
    with torch.no_grad():
        clean = model(images)  # the training forward's output, as the training glue passes it

    def forward():
        with torch.no_grad():
            return model(images)

    def train_step():
        F.cross_entropy(model(images), target).backward()

    def zero_grad():
        model.zero_grad(set_to_none=True)

    # The model's decoder has a Dropout, active in train mode: KernelNoise warns that clean_logits
    # come from a forward with dropout. Timing does not depend on it; the note says so once.
    warnings.filterwarnings("ignore", message="KernelNoise: clean_logits come from a forward with active dropout")
    kns = {}
    for k in ks:
        batched = KernelNoise(eta=ETA, num_samples=k, seed=SEED, granularity="tensor", batched=True)
        sequential = KernelNoise(eta=ETA, num_samples=k, seed=SEED, granularity="tensor", batched=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            logits_b, sigma_b = batched(model, images, clean_logits=clean)
        fallback = [str(w.message) for w in caught if "vmap" in str(w.message)]
        if fallback:
            notes.append(f"K={k}: the batched path fell back to sequential passes: {fallback[0]}")
        logits_s, sigma_s = sequential(model, images, clean_logits=clean)
        if not torch.equal(logits_b, clean) or not torch.equal(logits_s, clean):
            raise AssertionError(f"KernelNoise K={k}: returned logits are not the given clean_logits")
        if not (torch.isfinite(sigma_b).all() and sigma_b.max() > 0):
            raise AssertionError(f"KernelNoise K={k}: sigma is not finite and positive")
        atol = 1e-4 * sigma_s.abs().max().item()
        torch.testing.assert_close(
            sigma_b, sigma_s, rtol=1e-4, atol=atol, msg=lambda m: f"KernelNoise K={k}: batched vs sequential sigma: {m}"
        )
        log(
            f"- KernelNoise K={k}: batched vs sequential sigma, max |diff| "
            f"{(sigma_b - sigma_s).abs().max().item():.1e} (max sigma {sigma_s.max().item():.3g}): OK"
        )
        kns[k] = (batched, sequential)
    del logits_b, logits_s, sigma_b, sigma_s

    calls = {"forward": forward, "train step": train_step}
    setups = {"train step": zero_grad}
    for k, (batched, sequential) in kns.items():
        calls[f"batched K={k}"] = lambda kn=batched: kn(model, images, clean_logits=clean)
        calls[f"sequential K={k}"] = lambda kn=sequential: kn(model, images, clean_logits=clean)
    # The correctness call above was the first of the KernelNoise calls: one warm-up fewer for them.
    for name, fn in calls.items():
        extra = args.warmup - 1 if name.startswith(("batched", "sequential")) else args.warmup
        for _ in range(max(extra, 0)):
            time_call(fn, setups.get(name))
    med, busy = run_rounds(calls, args.repeat, 0, f"step {args.image}", setups)
    zero_grad()
    notes.append(load_note(f"step {args.image}", busy))
    return {"image": args.image, "ks": ks, "ms": {name: t * 1e3 for name, t in med.items()}}


def step_table(result) -> tuple[str, list[int]]:
    ms = result["ms"]
    fwd, step = ms["forward"], ms["train step"]
    head = (
        "| K | (c) KernelNoise batched ms | (d) sequential ms | (c)/(d) | (c)/(a) forward | "
        "(c)/(b) train step | (d)/(a) | (d)/(b) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    batching_loses = []  # the K at which the sequential passes are faster
    for k in result["ks"]:
        c, d = ms[f"batched K={k}"], ms[f"sequential K={k}"]
        if c > d:
            batching_loses.append(k)
        lines.append(
            f"| {k} | {fmt_ms(c)} | {fmt_ms(d)} | {c / d:.2f}x | {c / fwd:.2f}x | {c / step:.2f}x | "
            f"{d / fwd:.2f}x | {d / step:.2f}x |"
        )
    return "\n".join(lines), batching_loses
