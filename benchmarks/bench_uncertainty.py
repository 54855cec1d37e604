#!/usr/bin/env python
"""CPU benchmark of the kernel-noise uncertainty: uaal_ext's perturbation ops and KernelNoise (docs/performance.md).

Three parts, each timed in one run against its PyTorch baselines (rounds interleaved so drift hits
every method alike), all on the conv weights / logits of smp's DeepLabV3+ with a MobileNetV3 encoder:

  noise   uaal_ext.ops.perturbation.kernel_noise (one fused call for every weight) against an eager
          per-tensor loop of the same math (`kernel_noise_eager` below: randn, norms, w + eta *
          ||w|| * n / ||n||) and torch.compile of that loop; K perturbed copies of the 77 conv
          weights (4.7M elements), norms per tensor or per output filter.
          Floor: read the weights once and write the K copies.  Bar: fused >= 2x eager.
  stats   uaal_ext.ops.perturbation.perturbation_statistics (sigma and the Noise Stability score in one
          pass) against the eager formula (`perturbation_statistics_eager`) and torch.compile of it,
          on K perturbed logit tensors.  Floor: read the K + 1 logit tensors, write the 2 per-pixel
          maps.  Bar: fused >= 5x eager.
  step    the cost of uaal_ext.uncertainty.KernelNoise in a training step: K perturbed forwards
          batched with torch.vmap, and one by one (batched=False), against one plain forward and one
          forward + backward of a plain loss.  No bar; docs/performance.md asks for the ratios.

Correctness is checked before timing: the fused noise against uaal_ext.ops.reference (exact noise) and
every method's noise against the defining norm identity; the statistics against the eager formula
in float64; KernelNoise batched against sequential (the same sigma).

    python benchmarks/bench_uncertainty.py            # full run -> benchmarks/results/uncertainty_cpu.md
    python benchmarks/bench_uncertainty.py --quick    # smoke run, small shapes, 1 round
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

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
from uncertainty_cases import (  # noqa: E402
    ENCODER,
    ETA,
    MODEL_CLASSES,
    SEED,
    STATS_NOISE,
    bench_step,
    kernel_noise_eager,
    kernel_noise_fused,
    make_model,
    make_stats_inputs,
    model_weights,
    perturb_eager,
    perturbation_statistics_eager,
    perturbation_statistics_fused,
    step_table,
)

MEMORY_BUDGET_GIB = 24  # the stats shapes must fit this with K copies and the eager temporaries

FULL = {
    "noise_ks": "1,5,10",
    "noise_weights": 0,  # 0: every conv/linear weight of the model
    "stats_shapes": "2x19x256x512,2x150x256x256",
    "stats_ks": "5,10",
    "image": "2x3x256x256",
    "step_ks": "1,5,10",
}
QUICK = {
    "noise_ks": "1,2",
    "noise_weights": 8,
    "stats_shapes": "2x19x32x64,2x150x16x32",
    "stats_ks": "3",
    "image": "2x3x64x64",
    "step_ks": "1,2",
}
GRANULARITIES = ("tensor", "filter")
PARTS = ("noise", "stats", "step")

# The bars of docs/performance.md.
BAR_NOISE = 2.0  # fused kernel_noise speed-up over the eager loop
BAR_STATS = 5.0  # fused perturbation_statistics speed-up over the eager formula

FUSED, EAGER, COMPILED = "uaal_ext", "eager", "torch.compile(eager)"


# --------------------------------------------------------------------------------------------
# Part 1: kernel noise
# --------------------------------------------------------------------------------------------
def check_noise_exact(weights, log) -> None:
    """Fused op and the eager math (fed the reference's normals) against uaal_ext.ops.reference."""
    from uaal_ext.ops.reference import kernel_noise_normals_reference, kernel_noise_reference

    weights = weights[:4]
    k = 2
    for per_filter in (False, True):
        ref = kernel_noise_reference(weights, k, ETA, seed=SEED, offset=0, per_filter=per_filter)
        fused = kernel_noise_fused(weights, k, ETA, per_filter)
        for t, (w, r, f) in enumerate(zip(weights, ref, fused)):
            normals = torch.stack(
                [
                    kernel_noise_normals_reference(w.numel(), seed=SEED, offset=0, sample=s, tensor_index=t)
                    for s in range(k)
                ]
            ).reshape(k, *w.shape)
            eager = perturb_eager(w, normals, ETA, per_filter)
            atol = 1e-5 * r.abs().max().item()
            torch.testing.assert_close(
                f, r, rtol=1e-5, atol=atol, msg=lambda m: f"kernel_noise vs reference (weight {t}): {m}"
            )
            torch.testing.assert_close(
                eager, r, rtol=1e-5, atol=atol, msg=lambda m: f"eager loop vs reference (weight {t}): {m}"
            )
    log(
        f"- kernel_noise and the eager loop (fed the reference's normals) vs uaal_ext.ops.reference, first "
        f"{len(weights)} weights, K={k}, both granularities: OK"
    )


def check_noise_norms(name: str, outputs, weights, num_samples: int, per_filter: bool) -> float:
    """||theta_k - theta|| == eta * ||theta|| (per tensor or filter) for every sample; samples differ.

    Returns the largest relative error (float32 rounding of theta + delta limits it to ~1e-5).
    """
    worst = 0.0
    for t, (w, out) in enumerate(zip(weights, outputs)):
        if out.shape != (num_samples, *w.shape):
            raise AssertionError(
                f"{name}: weight {t} gives shape {tuple(out.shape)}, expected {(num_samples, *w.shape)}"
            )
        delta = out.double() - w.double()
        groups = w.shape[0] if per_filter else 1
        got = torch.linalg.vector_norm(delta.reshape(num_samples, groups, -1), dim=2)
        want = ETA * torch.linalg.vector_norm(w.double().reshape(groups, -1), dim=1)
        err = ((got - want).abs() / want.clamp_min(1e-30)).max().item()
        worst = max(worst, err)
        if not err < 1e-3:
            raise AssertionError(f"{name}: weight {t}: ||theta_k - theta|| / (eta ||theta||) off by {err:.2e}")
        if num_samples > 1 and torch.equal(out[0], out[1]):
            raise AssertionError(f"{name}: weight {t}: samples 0 and 1 are identical")
    return worst


def bench_noise(args, weights, bw, log, notes) -> list[dict]:
    ks = [int(k) for k in args.noise_ks.split(",")]
    numel = sum(w.numel() for w in weights)
    rows = []
    compiled_fn = None
    for granularity in GRANULARITIES:
        per_filter = granularity == "filter"
        for k in ks:
            label = f"noise K={k} {granularity}"
            methods = {
                FUSED: lambda k=k, pf=per_filter: kernel_noise_fused(weights, k, ETA, pf),
                EAGER: lambda k=k, pf=per_filter: kernel_noise_eager(weights, k, ETA, pf),
            }
            compile_s = None
            if not args.no_compile:
                print(f"[{label}] torch.compile of the eager loop ...", flush=True)
                compiled_fn, compile_s = compile_timed(
                    kernel_noise_eager, lambda c, k=k, pf=per_filter: c(weights, k, ETA, pf)
                )
                if compiled_fn is None:
                    notes.append(f"{label}: torch.compile failed ({compile_s}); left out")
                    compile_s = None
                else:
                    methods[COMPILED] = lambda c=compiled_fn, k=k, pf=per_filter: c(weights, k, ETA, pf)
            for name, fn in methods.items():
                worst = check_noise_norms(name, fn(), weights, k, per_filter)
                log(
                    f"- {name}: ||theta_k - theta|| = eta ||theta|| per {granularity}, max rel. error "
                    f"{worst:.1e}: OK [K={k}]"
                )
            # The check's call was each method's first untimed call.
            med, busy = run_rounds(methods, args.repeat, args.warmup - 1, label)
            notes.append(load_note(label, busy))
            floor = 4 * numel * (1 + k) / bw
            for name in methods:
                rows.append(
                    {
                        "K": k,
                        "granularity": granularity,
                        "method": name,
                        "ms": med[name] * 1e3,
                        "speedup": med[name] / med[FUSED],
                        "floor_ms": floor * 1e3,
                        "over_floor": med[name] / floor,
                        "compile_s": compile_s if name == COMPILED else None,
                    }
                )
            gc.collect()
    return rows


def noise_table(rows, whole_model: bool) -> tuple[str, list[str]]:
    head = "| K | granularity | method | ms | uaal_ext speed-up | floor ms | time / floor | compile s | bar |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    bars = []
    for r in rows:
        bar = ""
        if r["method"] == EAGER:
            ok = r["speedup"] >= BAR_NOISE
            bar = f">= {BAR_NOISE:g}x: {mark(ok)}"
            line = (
                f"kernel_noise K={r['K']} {r['granularity']}: uaal_ext vs eager loop "
                f"{r['speedup']:.2f}x (bar >= {BAR_NOISE:g}x): {mark(ok)}"
            )
            if not whole_model:  # a few small weights: call overheads dominate
                bar, line = "indicative: " + bar, line + " (indicative: not the whole model)"
            bars.append(line)
        lines.append(
            f"| {r['K']} | {r['granularity']} | {r['method']} | {fmt_ms(r['ms'])} | "
            f"{r['speedup']:.2f}x | {fmt_ms(r['floor_ms'])} | {r['over_floor']:.2f}x | "
            f"{fmt(r['compile_s'], '.1f')} | {bar} |"
        )
    return "\n".join(lines), bars


# --------------------------------------------------------------------------------------------
# Part 2: perturbation statistics
# --------------------------------------------------------------------------------------------
def stats_memory_gib(shape, k: int) -> float:
    """Peak bytes of one eager timing case plus its float64 check, in GiB (inputs kept throughout).

    float32 inputs (K + 1) L; eager: softmax of the perturbed logits K L (the in-place difference
    reuses it) and small per-pixel maps; the float64 check: inputs 2 (K + 1) L, temporaries 2 K L.
    """
    logits = 4 * torch.Size(shape).numel()
    return ((k + 1) + k + 2 * (k + 1) + 2 * k) * logits / 2**30


def check_stats_float64(log) -> None:
    """Fused op, eager formula and uaal_ext.ops.reference agree in float64 on small odd shapes."""
    from uaal_ext.ops.reference import perturbation_statistics_reference

    for shape, k in [((3, 19, 7, 11), 5), ((2, 150, 5, 9), 3)]:
        clean, perturbed = (t.double() for t in make_stats_inputs(shape, k, seed=1))
        ref = perturbation_statistics_reference(clean, perturbed)
        eager = perturbation_statistics_eager(clean, perturbed)
        fused = perturbation_statistics_fused(clean, perturbed)
        for what, got in (("eager", eager), ("uaal_ext", fused)):
            for i, metric in enumerate(("sigma", "ns")):
                torch.testing.assert_close(
                    got[i],
                    ref[i],
                    rtol=1e-10,
                    atol=1e-14,
                    msg=lambda m: f"{what} {metric} vs reference, {shape} K={k}: {m}",
                )
    log("- perturbation_statistics and the eager formula vs uaal_ext.ops.reference (float64, small shapes): OK")


def check_stats(methods: dict, clean, perturbed, label: str, log) -> None:
    """Every method in float32 against the eager formula run in float64 on the same inputs.

    The eager formula subtracts two rounded float32 softmaxes, so where a perturbation barely moves a
    pixel it keeps only a few digits of the deviation: eager and compiled get a looser relative
    tolerance than uaal_ext, which computes the deviation from the logit shifts.
    """
    want = perturbation_statistics_eager(clean.double(), perturbed.double())
    for name, fn in methods.items():
        got = fn()
        diffs = []
        rtol = 1e-4 if name == FUSED else 1e-2
        for i, metric in enumerate(("sigma", "ns")):
            atol = 1e-5 * want[i].abs().max().item()
            torch.testing.assert_close(
                got[i].double(),
                want[i],
                rtol=rtol,
                atol=atol,
                msg=lambda m: f"{name} {metric} vs float64 eager [{label}]: {m}",
            )
            diffs.append((got[i].double() - want[i]).abs().max().item())
        log(
            f"- {name} vs eager float64: max |diff| sigma {diffs[0]:.1e} (max {want[0].max().item():.3g}), "
            f"ns {diffs[1]:.1e} (max {want[1].max().item():.3g}): OK [{label}]"
        )
    del want


def bench_stats(args, bw, log, notes) -> list[dict]:
    shapes = [parse_shape(s) for s in args.stats_shapes.split(",")]
    ks = [int(k) for k in args.stats_ks.split(",")]
    rows = []
    for shape in shapes:
        for k in ks:
            label = f"{shape_label(shape)} K={k}"
            clean, perturbed = make_stats_inputs(shape, k)
            methods = {
                FUSED: lambda c=clean, p=perturbed: perturbation_statistics_fused(c, p),
                EAGER: lambda c=clean, p=perturbed: perturbation_statistics_eager(c, p),
            }
            compile_s = None
            if not args.no_compile:
                print(f"[{label}] torch.compile of the eager formula ...", flush=True)
                compiled_fn, compile_s = compile_timed(
                    perturbation_statistics_eager, lambda fn, c=clean, p=perturbed: fn(c, p)
                )
                if compiled_fn is None:
                    notes.append(f"{label}: torch.compile failed ({compile_s}); left out")
                    compile_s = None
                else:
                    methods[COMPILED] = lambda fn=compiled_fn, c=clean, p=perturbed: fn(c, p)
            check_stats(methods, clean, perturbed, label, log)
            gc.collect()
            # The check's call was each method's first untimed call.
            med, busy = run_rounds(methods, args.repeat, args.warmup - 1, label)
            notes.append(load_note(label, busy))
            pixels = clean.numel() // clean.shape[1]
            floor = 4 * ((k + 1) * clean.numel() + 2 * pixels) / bw
            for name in methods:
                rows.append(
                    {
                        "shape": shape_label(shape),
                        "K": k,
                        "method": name,
                        "ms": med[name] * 1e3,
                        "speedup": med[name] / med[FUSED],
                        "floor_ms": floor * 1e3,
                        "over_floor": med[name] / floor,
                        "compile_s": compile_s if name == COMPILED else None,
                    }
                )
            del clean, perturbed, methods
            gc.collect()
    return rows


def stats_table(rows) -> tuple[str, list[str]]:
    head = "| shape | K | method | ms | uaal_ext speed-up | floor ms | time / floor | compile s | bar |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    bars = []
    spec_shapes = {shape_label(parse_shape(s)) for s in FULL["stats_shapes"].split(",")}
    for r in rows:
        bar = ""
        if r["method"] == EAGER:
            ok = r["speedup"] >= BAR_STATS
            bar = f">= {BAR_STATS:g}x: {mark(ok)}"
            line = (
                f"perturbation_statistics {r['shape']} K={r['K']}: uaal_ext vs eager "
                f"{r['speedup']:.2f}x (bar >= {BAR_STATS:g}x): {mark(ok)}"
            )
            if r["shape"] not in spec_shapes:  # overheads dominate small shapes
                bar, line = "indicative: " + bar, line + " (indicative: not a benchmark shape)"
            bars.append(line)
        lines.append(
            f"| {r['shape']} | {r['K']} | {r['method']} | {fmt_ms(r['ms'])} | {r['speedup']:.2f}x | "
            f"{fmt_ms(r['floor_ms'])} | {r['over_floor']:.2f}x | {fmt(r['compile_s'], '.1f')} | {bar} |"
        )
    return "\n".join(lines), bars


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of: {', '.join(PARTS)}")
    p.add_argument(
        "--noise-ks",
        default=None,
        help=f"K for kernel_noise (default {FULL['noise_ks']}; --quick: {QUICK['noise_ks']})",
    )
    p.add_argument(
        "--noise-weights",
        type=int,
        default=None,
        help="use the model's first N conv weights (default all 77; --quick: 8)",
    )
    p.add_argument(
        "--stats-shapes",
        default=None,
        help=f"comma-separated NxCxHxW (default {FULL['stats_shapes']}; --quick: {QUICK['stats_shapes']})",
    )
    p.add_argument(
        "--stats-ks",
        default=None,
        help=f"K for perturbation_statistics (default {FULL['stats_ks']}; --quick: {QUICK['stats_ks']})",
    )
    p.add_argument(
        "--image",
        default=None,
        help=f"input of the model step, NxCxHxW (default {FULL['image']}; --quick: {QUICK['image']})",
    )
    p.add_argument(
        "--step-ks", default=None, help=f"K for KernelNoise (default {FULL['step_ks']}; --quick: {QUICK['step_ks']})"
    )
    p.add_argument("--repeat", type=int, default=None, help="timed rounds, median reported (default 5, --quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per method (default 2, --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baselines")
    p.add_argument("--quick", action="store_true", help="small shapes, 1 round, 256 MiB copy")
    p.add_argument("--bw-mib", type=int, default=None, help="copy size for the bandwidth (default 1024)")
    p.add_argument(
        "--output",
        default=None,
        help="Markdown output (default results/uncertainty_cpu.md, --quick: results/uncertainty_cpu_quick.md)",
    )
    args = p.parse_args(argv)

    fill_defaults(args, FULL, QUICK)
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    bw_mib = args.bw_mib or (256 if args.quick else 1024)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if unknown := set(parts) - set(PARTS):
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)  # the eager baselines draw from the global generator
    started = time.perf_counter()

    log = Report(args, "uncertainty_cpu")

    cmdline = log_report_header(log, "Kernel-noise uncertainty, CPU fp32")
    try:
        import uaal_ext
        import uaal_ext.ops.perturbation  # noqa: F401

        log(f"- uaal_ext build_info: `{uaal_ext.build_info()}`")
    except Exception as exc:  # noqa: BLE001
        print(f"error: uaal_ext is not importable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    model = make_model()
    weights = model_weights(model)
    num_weights = len(weights)
    if args.noise_weights:
        weights = weights[: args.noise_weights]
    numel = sum(w.numel() for w in weights)
    log(
        f'- model: smp.DeepLabV3Plus("{ENCODER}", encoder_weights=None, classes={MODEL_CLASSES}), random '
        f"init; noise on {len(weights)} conv/linear weights, {numel / 1e6:.2f}M elements; eta={ETA:g}"
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
        "- floors (bytes-moved, at that bandwidth): kernel_noise reads the weights once and writes K "
        "copies, 4 W (1 + K) bytes; perturbation_statistics reads K + 1 logit tensors and writes two "
        "per-pixel maps, 4 ((K + 1) L + 2 P) bytes"
    )
    notes: list[str] = []
    results: dict = {}

    log()
    log("## Correctness (before timing)")
    log()
    if "noise" in parts:
        check_noise_exact(weights, log)
    if "stats" in parts:
        check_stats_float64(log)
        worst = max(
            stats_memory_gib(parse_shape(s), int(k))
            for s in args.stats_shapes.split(",")
            for k in args.stats_ks.split(",")
        )
        log(
            f"- memory: largest statistics case needs ~{worst:.2f} GiB (float32 inputs, eager temporaries, "
            f"float64 check) of the {MEMORY_BUDGET_GIB} GiB budget"
        )
        if worst > MEMORY_BUDGET_GIB / 2:
            print(
                f"error: the statistics shapes need ~{worst:.1f} GiB, more than half of "
                f"{MEMORY_BUDGET_GIB} GiB; pass smaller --stats-shapes",
                file=sys.stderr,
            )
            return 2

    part_seconds = {}
    for part, bench in (
        ("noise", lambda: bench_noise(args, weights, bw, log, notes)),
        ("stats", lambda: bench_stats(args, bw, log, notes)),
        ("step", lambda: bench_step(args, model, log, notes)),
    ):
        if part in parts:
            t0 = time.perf_counter()
            results[part] = bench()
            part_seconds[part] = time.perf_counter() - t0

    log()
    log("## Results")
    log()
    log(
        "uaal_ext speed-up = that row's median time / uaal_ext's (> 1: uaal_ext is faster); time / floor = "
        "that row's time over the bytes-moved floor."
    )
    bars: list[str] = []
    if "noise" in results:
        table, noise_bars = noise_table(results["noise"], whole_model=len(weights) == num_weights)
        bars += noise_bars
        log()
        log(f"### kernel_noise: K perturbed copies of {len(weights)} weights ({numel / 1e6:.2f}M elements)")
        log()
        log(table)
    if "stats" in results:
        table, stats_bars = stats_table(results["stats"])
        bars += stats_bars
        log()
        log(
            f"### perturbation_statistics: sigma and ns from K perturbed logits (perturbed = clean + "
            f"{STATS_NOISE:g} randn)"
        )
        log()
        log(table)
    if "step" in results:
        step = results["step"]
        table, batching_loses = step_table(step)
        log()
        log(
            f"### KernelNoise in a training step: input {step['image']}, model in train mode, "
            f"granularity tensor, clean_logits given"
        )
        log()
        log(
            f"- (a) one plain forward `model(x)` under no_grad: {fmt_ms(step['ms']['forward'])} ms"
            + ("  -- over 1 s: consider a smaller --image" if step["ms"]["forward"] > 1000 else "")
        )
        log(
            f"- (b) one training step, forward + backward of F.cross_entropy (gradients set to None "
            f"outside the timing): {fmt_ms(step['ms']['train step'])} ms"
        )
        log(
            "- (c) `KernelNoise(batched=True)(model, x, clean_logits=out)`: the K perturbed forwards as "
            "one torch.vmap over functional_call, plus kernel_noise and perturbation_statistics; "
            "(d) the same with batched=False: one functional_call per sample"
        )
        log()
        log(table)
        log()
        log(
            "The decoder's Dropout is active in train mode, so KernelNoise warns that the clean logits "
            "include dropout (its perturbed passes switch dropout off); the warning is silenced here, "
            "it does not change the cost."
        )
        if batching_loses:
            log()
            log(
                f"**Batching does not pay on this CPU at K = {', '.join(map(str, batching_loses))}** "
                "((c)/(d) > 1 above). Under torch.vmap, vmap's "
                "batching rule rewrites a conv whose weight carries the sample dim: the first conv becomes "
                "one conv with K x the output channels, and from then on, with the activations batched "
                "too, every conv folds the K samples into the channels and runs as one grouped conv with "
                "K x the groups (an ordinary conv becomes a K-group conv, a depthwise conv one with K x the "
                "channels). A single forward at this size already keeps the 2 cores busy, so batching has "
                "no idle hardware to fill, while oneDNN's grouped convs are not faster per FLOP than K "
                "ordinary ones. Batching is meant for GPUs, where one small forward leaves the device "
                "under-used; on CPU, `batched=False` is the cheaper setting."
            )
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
    log(
        f"Run time: {', '.join(f'{k} {v:.0f} s' for k, v in part_seconds.items())}; total "
        f"{time.perf_counter() - started:.0f} s."
    )

    log.write(
        {
            "command": cmdline,
            "torch": torch.__version__,
            "threads": args.threads,
            "bandwidth_bytes_per_s": bw,
            **results,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
