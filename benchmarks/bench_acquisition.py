#!/usr/bin/env python
"""CPU benchmark of the acquisition scores: uaal_ext.acquisition.image_scores against PyTorch (docs/performance.md).

One score per image from a batch of logits, as the active-learning loop ranks its pool: a per-pixel
map (entropy, margin, least confidence on logits (N, C, H, W); MC-Dropout entropy and BALD on T
sampled logits (T, N, C, H, W)), then a per-image aggregate over the valid pixels (mean; also the
mean of the top fraction q for entropy; one configuration ignores ~5% of the pixels).

Methods, all timed in one run (rounds interleaved so drift hits every method alike):
  uaal_ext              uaal_ext.acquisition.image_scores (argument checks + the two fused ops)
  uaal_ext ops          the raw ops: torch.ops.uaal_ext.aggregate_scores(pixel_scores(x, method), ...)
  eager                 the obvious eager PyTorch (`PIXEL_EAGER` and `aggregate_eager` below:
                        softmax / log_softmax, topk(2) for margin, amax for least confidence, mean
                        over T for MC, then a per-image mean or topk + mean)
  torch.compile(eager)  torch.compile of that same function, compiled afresh per case (compile s)

Correctness is checked before timing: the fused path and the eager functions against
uaal_ext.ops.reference in float64 on small odd shapes, then every method in float32 against the eager
functions run in float64 at each timed shape. The floor is the bytes-moved floor at the copy
bandwidth measured in the same run: read the logits once (all T samples for MC), write and read
back the float32 per-pixel map (and read the ignore mask where there is one).
Bar (docs/performance.md): uaal_ext >= 5x faster than eager for every score.

    python benchmarks/bench_acquisition.py            # full run -> benchmarks/results/acquisition_cpu.md
    python benchmarks/bench_acquisition.py --quick    # smoke run, small shapes
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # benchmarks/ is not a package
    Report,
    compile_timed,
    copy_bandwidth,
    fill_defaults,
    fmt,
    fmt_ms,
    load_note,
    log_report_header,
    mark,
    parse_shape,
    run_rounds,
    shape_label,
)

IGNORED_FRACTION = 0.05  # share of pixels in the ignore mask of the masked configuration
TOPK_Q = 0.1  # the top fraction of "topk_mean"
LOGIT_SCALE = 3.0  # logits = 3 randn
MC_NOISE = 1.0  # MC logits = 3 randn (shared by the samples) + 1 randn (per sample)
MEMORY_BUDGET_GIB = 24  # inputs, eager temporaries and the float64 check must fit this

FULL = {
    "shapes": "2x19x512x1024,2x150x512x512",  # CityScapes-like, ADE20K-like (the bar shapes)
    "mc_shapes": "2x19x256x512,2x150x128x256",  # x T samples: smaller, so T copies stay comfortable
    "mc_samples": 10,
}
QUICK = {"shapes": "2x19x64x128,2x150x32x64", "mc_shapes": "2x19x32x64,2x150x16x32", "mc_samples": 10}

LOGIT_SCORES = ("entropy", "margin", "least_confidence")  # read logits (N, C, *spatial)
MC_SCORES = ("mc_entropy", "bald")  # read MC logits (T, N, C, *spatial)
SCORES = LOGIT_SCORES + MC_SCORES
# (score, reduction, with an ignore mask): the configurations timed at every shape of their kind.
CASES = (
    ("entropy", "mean", False),
    ("entropy", "mean", True),
    ("entropy", "topk_mean", False),
    ("margin", "mean", False),
    ("least_confidence", "mean", False),
    ("mc_entropy", "mean", False),
    ("bald", "mean", False),
)

# The bar of docs/performance.md.
BAR_EAGER = 5.0  # uaal_ext speed-up over eager PyTorch, every score

FUSED, OPS, EAGER, COMPILED = "uaal_ext", "uaal_ext ops", "eager", "torch.compile(eager)"


# --------------------------------------------------------------------------------------------
# Baselines: the scores written the obvious way in eager PyTorch (finite logits assumed:
# exp(-inf) * -inf is NaN here; uaal_ext.ops.reference handles it).
# --------------------------------------------------------------------------------------------
def entropy_eager(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_c p_c log p_c: (N, C, *spatial) -> (N, *spatial)."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1)


def margin_eager(logits: torch.Tensor) -> torch.Tensor:
    """1 - (p_top1 - p_top2)."""
    top = torch.softmax(logits, dim=1).topk(2, dim=1).values  # (N, 2, *spatial)
    return 1 - (top[:, 0] - top[:, 1])


def least_confidence_eager(logits: torch.Tensor) -> torch.Tensor:
    """1 - p_top1."""
    return 1 - torch.softmax(logits, dim=1).amax(dim=1)


def mc_entropy_eager(mc_logits: torch.Tensor) -> torch.Tensor:
    """H(mean_t p_t): (T, N, C, *spatial) -> (N, *spatial)."""
    p = torch.softmax(mc_logits, dim=2).mean(0)  # (N, C, *spatial)
    return -(p * p.log()).sum(1)


def bald_eager(mc_logits: torch.Tensor) -> torch.Tensor:
    """H(mean_t p_t) - mean_t H(p_t), clamped at 0 like the reference (rounding can dip below)."""
    logp = F.log_softmax(mc_logits, dim=2)  # (T, N, C, *spatial)
    p = logp.exp()
    mean_p = p.mean(0)
    predictive = -(mean_p * mean_p.log()).sum(1)
    expected = -(p * logp).sum(2).mean(0)
    return (predictive - expected).clamp(min=0)


PIXEL_EAGER = {
    "entropy": entropy_eager,
    "margin": margin_eager,
    "least_confidence": least_confidence_eager,
    "mc_entropy": mc_entropy_eager,
    "bald": bald_eager,
}


def aggregate_eager(scores: torch.Tensor, ignore_mask, reduction: str, q: float) -> torch.Tensor:
    """Per-image mean, or mean of the top ceil(q n) pixels, over the valid pixels: (N, *spatial) -> (N,)."""
    flat = scores.flatten(1)
    if ignore_mask is None:
        if reduction == "mean":
            return flat.mean(1)
        k = max(1, math.ceil(q * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(1)
    if reduction != "mean":  # a per-image k from the valid count: not a configuration timed here
        raise NotImplementedError("aggregate_eager: topk_mean with an ignore mask")
    valid = ~ignore_mask.flatten(1)
    return torch.where(valid, flat, 0).sum(1) / valid.sum(1).clamp(min=1)


def make_eager(score: str, reduction: str, q: float):
    """The eager image-score function of one configuration, fn(x, ignore_mask) -> (N,)."""
    pixel = PIXEL_EAGER[score]

    def image_scores_eager(x, ignore_mask):
        return aggregate_eager(pixel(x), ignore_mask, reduction, q)

    return image_scores_eager


def image_scores_fused(score: str, x, ignore_mask, reduction: str, q: float):
    from uaal_ext.acquisition import image_scores

    key = "mc_logits" if score in MC_SCORES else "logits"
    return image_scores(score, **{key: x}, ignore_mask=ignore_mask, reduction=reduction, q=q)


def image_scores_ops(score: str, x, ignore_mask, reduction: str, q: float):
    valid = None if ignore_mask is None else ~ignore_mask
    return torch.ops.uaal_ext.aggregate_scores(torch.ops.uaal_ext.pixel_scores(x, score), valid, reduction, q)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def make_inputs(shape, mc_samples: int | None, seed: int = 0):
    """Logits (N, C, *spatial), or MC logits (T, N, C, *spatial) when mc_samples is given, and an
    ignore mask (N, *spatial) with ~IGNORED_FRACTION True."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).mul_(LOGIT_SCALE)
    if mc_samples is not None:
        x = torch.randn((mc_samples, *shape), generator=gen).mul_(MC_NOISE).add_(x)
    n, _, *spatial = shape
    ignore_mask = torch.rand((n, *spatial), generator=gen) < IGNORED_FRACTION
    return x, ignore_mask


def case_label(score: str, reduction: str, masked: bool) -> str:
    label = f"{score} {reduction}" + (f" q={TOPK_Q:g}" if reduction == "topk_mean" else "")
    return label + (f", {IGNORED_FRACTION:.0%} ignored" if masked else "")


def input_label(shape, mc_samples: int | None) -> str:
    return (f"T={mc_samples} " if mc_samples is not None else "") + shape_label(shape)


def memory_gib(shape, mc_samples: int | None) -> float:
    """Upper bound of one case's peak, in GiB: float32 input 4 L, eager float32 temporaries (at most
    three input-sized: log_softmax, exp, product) 12 L, float64 copy 8 L and its eager temporaries 24 L."""
    elements = torch.Size(shape).numel() * (mc_samples or 1)
    return (4 + 12 + 8 + 24) * elements / 2**30


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------
def check_float64(cases, mc_samples: int, log) -> None:
    """Fused path and eager functions agree with uaal_ext.ops.reference in float64 on small odd shapes."""
    from uaal_ext.ops.reference import aggregate_scores_reference, pixel_scores_reference

    for shape in [(3, 19, 7, 11), (2, 150, 5, 9)]:
        for score, reduction, masked in cases:
            mc = mc_samples if score in MC_SCORES else None
            x, ignore_mask = make_inputs(shape, mc, seed=1)
            x, ignore_mask = x.double(), ignore_mask if masked else None
            valid = None if ignore_mask is None else ~ignore_mask
            ref = aggregate_scores_reference(pixel_scores_reference(score, x), valid, reduction, TOPK_Q)
            eager = make_eager(score, reduction, TOPK_Q)(x, ignore_mask)
            fused = image_scores_fused(score, x, ignore_mask, reduction, TOPK_Q)
            ops = image_scores_ops(score, x, ignore_mask, reduction, TOPK_Q)
            for what, got in ((EAGER, eager), (FUSED, fused), (OPS, ops)):
                torch.testing.assert_close(
                    got,
                    ref,
                    rtol=1e-10,
                    atol=1e-14,
                    msg=lambda m: (
                        f"{what} vs reference, {case_label(score, reduction, masked)}, {input_label(shape, mc)}: {m}"
                    ),
                )
    log(
        f"- uaal_ext (image_scores and the raw ops) and the eager functions vs uaal_ext.ops.reference "
        f"(float64, shapes 3x19x7x11 and 2x150x5x9, T={mc_samples} for MC, every configuration): OK"
    )


def check_case(methods: dict, want: torch.Tensor, label: str, log) -> None:
    """Every method in float32 against the eager function run in float64 on the same inputs."""
    atol = 1e-5 * want.abs().max().item()
    diffs = []
    for name, fn in methods.items():
        got = fn()
        if got.shape != want.shape or got.dtype != torch.float32:
            raise AssertionError(
                f"{name} [{label}]: got {got.dtype} {tuple(got.shape)}, expected float32 {tuple(want.shape)}"
            )
        torch.testing.assert_close(
            got.double(), want, rtol=1e-4, atol=atol, msg=lambda m: f"{name} vs float64 eager [{label}]: {m}"
        )
        diffs.append(f"{name} {((got.double() - want).abs() / want.abs()).max().item():.1e}")
    log(
        f"- float32 vs eager float64, max rel. diff: {', '.join(diffs)} "
        f"(scores {want.min().item():.4g} .. {want.max().item():.4g}): OK [{label}]"
    )


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------
def bench_shape(args, shape, mc_samples: int | None, cases, bw, log, notes) -> list[dict]:
    """Every configuration of `cases` on one input shape; the float64 pixel map is computed once per score."""
    label_in = input_label(shape, mc_samples)
    x, ignore_all = make_inputs(shape, mc_samples)
    n = shape[0]
    pixels = ignore_all.numel()
    rows = []
    ref_maps: dict[str, torch.Tensor] = {}
    for score, reduction, masked in cases:
        label = f"{label_in} {case_label(score, reduction, masked)}"
        ignore_mask = ignore_all if masked else None
        eager_fn = make_eager(score, reduction, TOPK_Q)
        methods = {
            FUSED: lambda s=score, m=ignore_mask, r=reduction, x=x: image_scores_fused(s, x, m, r, TOPK_Q),
            OPS: lambda s=score, m=ignore_mask, r=reduction, x=x: image_scores_ops(s, x, m, r, TOPK_Q),
            EAGER: lambda f=eager_fn, m=ignore_mask, x=x: f(x, m),
        }
        compile_s = None
        if not args.no_compile:
            print(f"[{label}] torch.compile of the eager function ...", flush=True)
            compiled_fn, compile_s = compile_timed(eager_fn, lambda c, m=ignore_mask, x=x: c(x, m))
            if compiled_fn is None:
                notes.append(f"{label}: torch.compile failed ({compile_s}); left out")
                compile_s = None
            else:
                methods[COMPILED] = lambda c=compiled_fn, m=ignore_mask, x=x: c(x, m)
        if score not in ref_maps:
            ref_maps = {score: PIXEL_EAGER[score](x.double())}  # one float64 map alive at a time
        want = aggregate_eager(ref_maps[score], ignore_mask, reduction, TOPK_Q)
        check_case(methods, want, label, log)
        gc.collect()
        # The check's call was each method's first untimed call.
        med, busy = run_rounds(methods, args.repeat, args.warmup - 1, label)
        notes.append(load_note(label, busy))
        logits_bytes = x.numel() * x.element_size()
        floor_bytes = logits_bytes + 2 * 4 * pixels + (pixels if masked else 0)
        floor = floor_bytes / bw
        for name in methods:
            rows.append(
                {
                    "input": label_in,
                    "score": score,
                    "reduction": reduction,
                    "masked": masked,
                    "case": case_label(score, reduction, masked),
                    "method": name,
                    "ms": med[name] * 1e3,
                    "images_per_s": n / med[name],
                    "speedup": med[name] / med[FUSED],
                    "floor_ms": floor * 1e3,
                    "over_floor": med[name] / floor,
                    "compile_s": compile_s if name == COMPILED else None,
                }
            )
        del methods
        gc.collect()
    del x, ignore_all, ref_maps
    gc.collect()
    return rows


def results_table(rows, full_inputs: set[str]) -> tuple[str, list[str]]:
    head = "| input | score | method | ms | images/s | uaal_ext speed-up | floor ms | time / floor | compile s | bar |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    bars = []
    for r in rows:
        bar = ""
        if r["method"] == EAGER:
            ok = r["speedup"] >= BAR_EAGER
            bar = f">= {BAR_EAGER:g}x: {mark(ok)}"
            line = (
                f"{r['input']} {r['case']}: uaal_ext vs eager {r['speedup']:.2f}x (bar >= {BAR_EAGER:g}x): {mark(ok)}"
            )
            if r["input"] not in full_inputs:  # overheads dominate small shapes
                bar, line = "indicative: " + bar, line + " (indicative: not a benchmark shape)"
            bars.append(line)
        lines.append(
            f"| {r['input']} | {r['case']} | {r['method']} | {fmt_ms(r['ms'])} | "
            f"{r['images_per_s']:.3g} | {r['speedup']:.2f}x | {fmt_ms(r['floor_ms'])} | "
            f"{r['over_floor']:.2f}x | {fmt(r['compile_s'], '.1f')} | {bar} |"
        )
    return "\n".join(lines), bars


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scores", default=",".join(SCORES), help=f"comma-separated subset of: {', '.join(SCORES)}")
    p.add_argument(
        "--shapes",
        default=None,
        help=f"logits shapes NxCxHxW for {', '.join(LOGIT_SCORES)} "
        f"(default {FULL['shapes']}; --quick: {QUICK['shapes']})",
    )
    p.add_argument(
        "--mc-shapes",
        default=None,
        help=f"per-sample shapes NxCxHxW for {', '.join(MC_SCORES)} "
        f"(default {FULL['mc_shapes']}; --quick: {QUICK['mc_shapes']})",
    )
    p.add_argument("--mc-samples", type=int, default=None, help="T, the MC-Dropout samples (default 10)")
    p.add_argument("--repeat", type=int, default=None, help="timed rounds, median reported (default 5, --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per method (default 2, --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baseline")
    p.add_argument("--quick", action="store_true", help="small shapes, 3 rounds, 256 MiB copy")
    p.add_argument("--bw-mib", type=int, default=None, help="copy size for the bandwidth (default 1024)")
    p.add_argument(
        "--output",
        default=None,
        help="Markdown output (default results/acquisition_cpu.md, --quick: results/acquisition_cpu_quick.md)",
    )
    args = p.parse_args(argv)

    fill_defaults(args, FULL, QUICK)
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    bw_mib = args.bw_mib or (256 if args.quick else 1024)
    scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    if unknown := set(scores) - set(SCORES):
        p.error(f"unknown scores {sorted(unknown)}; choose from {SCORES}")
    if args.mc_samples < 1:
        p.error("--mc-samples must be >= 1")
    cases = [c for c in CASES if c[0] in scores]
    logit_cases = [c for c in cases if c[0] in LOGIT_SCORES]
    mc_cases = [c for c in cases if c[0] in MC_SCORES]
    inputs = ([(parse_shape(s), None, logit_cases) for s in args.shapes.split(",")] if logit_cases else []) + (
        [(parse_shape(s), args.mc_samples, mc_cases) for s in args.mc_shapes.split(",")] if mc_cases else []
    )
    if any(len(shape) < 3 for shape, _, _ in inputs):
        p.error("shapes need at least one spatial dim (NxCxHxW)")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    log = Report(args, "acquisition_cpu")

    cmdline = log_report_header(log, "Acquisition scores, CPU fp32")
    try:
        import uaal_ext
        import uaal_ext.acquisition  # noqa: F401

        log(f"- uaal_ext build_info: `{uaal_ext.build_info()}`")
    except Exception as exc:  # noqa: BLE001
        print(f"error: uaal_ext.acquisition is not importable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    log(
        f"- inputs: logits = {LOGIT_SCALE:g} randn (N, C, H, W); MC logits = {LOGIT_SCALE:g} randn "
        f"(shared) + {MC_NOISE:g} randn (per sample), (T, N, C, H, W) with T = {args.mc_samples}; the "
        f"masked configuration ignores ~{IGNORED_FRACTION:.0%} of the pixels (a random bool mask); "
        f"topk_mean takes q = {TOPK_Q:g}"
    )
    log(
        f"- timing: median of {args.repeat} rounds after {args.warmup} untimed calls per method (the "
        f"correctness check's call is the first), methods interleaved in each round; torch.compile "
        f"with fullgraph=True, dynamic=False, compiled afresh per case before the checks (its first "
        f"call, reported as compile s; inductor's on-disk cache can shorten it on a rerun)"
    )
    bw = copy_bandwidth(bw_mib << 20, repeat=max(args.repeat, 5))
    log(
        f"- copy bandwidth: {bw / 1e9:.1f} GB/s ({bw_mib} MiB float32 `copy_`, read + write counted, "
        f"median of {max(args.repeat, 5)}, {args.threads} threads)"
    )
    log(
        "- floor (bytes-moved, at that bandwidth): read the logits once (all T samples for MC), write "
        "the float32 per-pixel map and read it back: 4 L + 8 P bytes (+ P for the bool mask where "
        "pixels are ignored); L logit elements, P pixels"
    )

    log()
    log("## Correctness (before timing)")
    log()
    check_float64(cases, args.mc_samples, log)
    worst = max(memory_gib(shape, mc) for shape, mc, _ in inputs)
    log(
        f"- memory: largest case needs at most ~{worst:.2f} GiB (float32 input, eager temporaries, "
        f"float64 check) of the {MEMORY_BUDGET_GIB} GiB budget"
    )
    if worst > MEMORY_BUDGET_GIB / 2:
        print(
            f"error: the shapes need up to ~{worst:.1f} GiB, more than half of {MEMORY_BUDGET_GIB} GiB; "
            f"pass smaller --shapes / --mc-shapes or fewer --mc-samples",
            file=sys.stderr,
        )
        return 2

    rows: list[dict] = []
    notes: list[str] = []
    for shape, mc, shape_cases in inputs:
        rows += bench_shape(args, shape, mc, shape_cases, bw, log, notes)

    full_inputs = {input_label(parse_shape(s), None) for s in FULL["shapes"].split(",")}
    full_inputs |= {input_label(parse_shape(s), FULL["mc_samples"]) for s in FULL["mc_shapes"].split(",")}
    table, bars = results_table(rows, full_inputs)
    log()
    log("## Results")
    log()
    log(
        "uaal_ext speed-up = that row's median time / uaal_ext's (> 1: uaal_ext is faster); images/s = N / "
        "time; time / floor = that row's time over the bytes-moved floor."
    )
    log()
    log(table)
    log()
    for note in notes:
        log(f"- {note}")
    log()
    if bars:
        log("## Bars (docs/performance.md)")
        log()
        for b in bars:
            log(f"- {b}")
        log()
    log(f"Run time: {time.perf_counter() - started:.0f} s.")

    log.write(
        {
            "command": cmdline,
            "torch": torch.__version__,
            "threads": args.threads,
            "bandwidth_bytes_per_s": bw,
            "mc_samples": args.mc_samples,
            "rows": rows,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
