#!/usr/bin/env python
"""CPU benchmark of the UAAL cross-entropy: uaal_ext against PyTorch baselines (docs/performance.md).

Setting: fp32 logits (N, C, H, W), ignore_index=255 with ~5% ignored pixels, reduction "mean",
alpha=1, exponent=2, default uncertainty (normalized entropy of the same logits).

Methods, all timed in one run (rounds interleaved so drift hits every method and both logits
layouts alike):
  uaal_ext                  uaal_ext.uaal_cross_entropy (for logits that need a gradient: the fused
                            loss + gradient op, whose "fwd" already holds the gradient)
  uaal_ext (two-pass)       the same loss through the separate forward and backward ops: the path
                            of reduction="none"
  uaal_ext (by weight)      uaal_ext.uaal_cross_entropy with normalize_by_weight=True (the mean divided
                            by sum c_y w): on the CPU the fused forward writes the softmax into the
                            gradient's buffer and a second pass turns it into the gradient in place
  eager reference           `uaal_loss_eager` below: log_softmax, entropy from it, detached weights, nll
  torch.compile(reference)  torch.compile of that same function (compiled and warmed up first)
  torch.compile(by-weight reference)
                            torch.compile of the eager reference with the by-weight mean: the
                            baseline of the by-weight row
  F.cross_entropy           plain eager F.cross_entropy (same ignore_index, mean), no UAAL weighting

Correctness is checked before timing (uaal_ext, and uaal_ext (by weight) against the eager reference
with the same normalisation, loss and gradient).
"fwd" is a training-mode forward (logits require grad, graph discarded); "fwd+bwd" adds
backward() of the mean loss. Peak extra memory of fwd+bwd is measured in a fresh subprocess per
method (see `measure_memory`). The floor is the bytes-moved floor at the copy bandwidth measured in
the same run: forward reads the logits once (L bytes), backward reads them once and writes the
gradient once (fwd+bwd = 3L); the by-weight row moves a tensor of the logits' size once more (its
second pass reads the kept softmax and writes the gradient over it, or a pre-pass reads the logits
again: fwd 2L, fwd+bwd 4L); the per-pixel target/weights are left out of the floor.

    python benchmarks/bench_loss.py              # full run -> benchmarks/results/loss_cpu.md
    python benchmarks/bench_loss.py --quick      # smoke run, small shapes, seconds
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # benchmarks/ is not a package
    Report,
    copy_bandwidth,
    cpu_snapshot,
    fmt,
    fmt_ms,
    log_report_header,
    mark,
    other_load,
    parse_shape,
    shape_label,
    shape_str,
)
from loss_cases import (  # noqa: E402
    ALPHA,
    BY_WEIGHT,
    COMPILED_BY_WEIGHT,
    EXPONENT,
    IGNORE_INDEX,
    IGNORED_FRACTION,
    METHODS,
    OURS,
    get_method,
    make_inputs,
    plain_cross_entropy,
    uaal_loss_eager,
    uaal_loss_eager_by_weight,
)

FULL_SHAPES = "2x19x512x1024,2x150x512x512"  # the shapes the bars are defined at (docs/performance.md)
QUICK_SHAPES = "2x19x64x128,2x150x32x64"

# The bars of docs/performance.md.
BAR_VS_COMPILE = 3.0  # fwd+bwd speed-up over torch.compile(reference)
BAR_VS_CE = 4.0  # fwd+bwd speed-up over eager F.cross_entropy
BAR_FLOOR = 2.0  # fwd+bwd time / bytes-moved floor
BAR_MEMORY = 1.1  # peak extra memory of fwd+bwd, in units of the logits' size

# Reads (and writes) of the logits' size in the bytes-moved floor, fwd and fwd+bwd; the by-weight
# mean needs its denominator sum c_y w before the gradient pass, and with the entropy weight that
# takes one more read of the logits.
FLOOR_LOGITS = {BY_WEIGHT: (2, 4)}
DEFAULT_FLOOR_LOGITS = (1, 3)


# --------------------------------------------------------------------------------------------
# Inputs and timing
# --------------------------------------------------------------------------------------------


def run_fwd(fn, x, t):
    fn(x, t)


def run_fwd_bwd(fn, x, t):
    fn(x, t).backward()


def time_once(step, fn, x, t) -> float:
    x.grad = None  # free the last gradient outside the timed region
    t0 = time.perf_counter()
    step(fn, x, t)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Peak memory (runs in a fresh subprocess per method)
# --------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class _RssSampler:
    """Fallback when clear_refs is not writable: poll VmRSS (may miss peaks shorter than ~1 ms)."""

    def __init__(self):
        self.peak = _status_kib("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("VmRSS"))
            time.sleep(0.0005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("VmRSS"))


def _settle() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return _status_kib("VmRSS")


def measure_memory(method: str, shape, threads: int, layout: str = "contiguous") -> dict:
    """Peak RSS growth of one fwd+bwd (gradient included) over the process's RSS with the inputs.

    The baseline is taken after a warm-up at a tiny shape (thread pools, lazy inits), before any
    full-size call, so memory an implementation keeps between calls (a buffer cache) counts as
    extra. torch.compile is the exception: compiling at the full shape leaves code and Python
    objects behind for good, so its baseline is taken after its full-size warm-up (inductor keeps
    no tensors between calls).
    """
    torch.set_num_threads(threads)
    fn = get_method(method)
    x, t = make_inputs(shape, layout=layout)
    if method != "torch.compile(reference)":
        xs, ts = make_inputs((*shape[:2], *[min(d, 8) for d in shape[2:]]), seed=1, layout=layout)
        for _ in range(2):
            time_once(run_fwd_bwd, fn, xs, ts)
        del xs, ts
        rss_base = _settle()
    for _ in range(2):  # full-size warm-up: compiles, fills any cache the method keeps
        time_once(run_fwd_bwd, fn, x, t)
    x.grad = None
    rss_warm = _settle()
    if method == "torch.compile(reference)":
        rss_base = rss_warm
    if _reset_peak_rss():
        run_fwd_bwd(fn, x, t)
        peak, how = _status_kib("VmHWM"), "VmHWM after clear_refs"
    else:
        with _RssSampler() as sampler:
            run_fwd_bwd(fn, x, t)
        peak, how = sampler.peak, "VmRSS polled every 0.5 ms (clear_refs not writable)"
    x.grad = None
    rss_after = _settle()
    logits_bytes = x.numel() * x.element_size()
    extra = max(peak - min(rss_base, rss_warm), 0) * 1024
    held = max(rss_after - rss_base, 0) * 1024
    return {
        "method": method,
        "shape": list(shape),
        "extra_bytes": extra,
        "extra_x_logits": extra / logits_bytes,
        "held_between_calls_x_logits": held / logits_bytes,
        "how": how,
    }


def memory_in_subprocess(method: str, shape, threads: int, layout: str) -> dict:
    env = dict(os.environ)
    # A fixed threshold keeps every block above 128 KiB in its own mmap, returned to the OS on
    # free (glibc's dynamic threshold would otherwise grow and serve big blocks from the heap).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure-memory",
        method,
        "--shapes",
        shape_str(shape),
        "--threads",
        str(threads),
        "--layouts",
        layout,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"method": method, "extra_x_logits": float("nan"), "how": "failed: " + " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------
def _loss_and_grad(fn, x, t):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, t)
    loss.backward()
    return loss.detach(), x.grad


def check_baseline_against_reference(log) -> None:
    """The eager baseline must compute the project's reference math (float64, small input)."""
    try:
        from uaal_ext.ops.reference import uaal_cross_entropy_reference
    except Exception as exc:  # noqa: BLE001  (reference not written yet, or package not importable)
        log(f"- eager baseline vs uaal_ext.ops.reference: skipped ({type(exc).__name__}: {exc})")
        return
    for shape in [(3, 19, 7, 11), (2, 150, 5, 9)]:
        x, t = make_inputs(shape, seed=1)
        x = x.detach().double()
        for normalize_by_weight in (False, True):
            ref = uaal_cross_entropy_reference(
                x, t, ignore_index=IGNORE_INDEX, alpha=ALPHA, exponent=EXPONENT, normalize_by_weight=normalize_by_weight
            )
            ours = uaal_loss_eager(x, t, normalize_by_weight=normalize_by_weight)
            torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-10, atol=0)
    log("- eager baseline (and its by-weight mean) vs uaal_ext.ops.reference (float64, small shapes): OK")


def check_correctness(methods: dict, x, t, log) -> None:
    references = {"eager reference": _loss_and_grad(methods["eager reference"], x, t)}
    if BY_WEIGHT in methods:
        references["eager reference (by weight)"] = _loss_and_grad(uaal_loss_eager_by_weight, x, t)
    for name in (OURS, BY_WEIGHT, "torch.compile(reference)", COMPILED_BY_WEIGHT):
        if name not in methods:
            continue
        by_weight = name in (BY_WEIGHT, COMPILED_BY_WEIGHT)
        if by_weight and "eager reference (by weight)" not in references:
            references["eager reference (by weight)"] = _loss_and_grad(uaal_loss_eager_by_weight, x, t)
        ref_loss, ref_grad = references["eager reference (by weight)" if by_weight else "eager reference"]
        grad_atol = 1e-4 * ref_grad.abs().max().item()
        loss, grad = _loss_and_grad(methods[name], x, t)
        torch.testing.assert_close(
            loss, ref_loss, rtol=1e-4, atol=0, msg=lambda m: f"{name} loss vs eager reference: {m}"
        )
        torch.testing.assert_close(
            grad, ref_grad, rtol=1e-4, atol=grad_atol, msg=lambda m: f"{name} gradient vs eager reference: {m}"
        )
        log(
            f"- {name} vs eager reference{' (by weight)' if by_weight else ''}: "
            f"loss {loss.item():.6f} vs {ref_loss.item():.6f}, "
            f"max |grad diff| {(grad - ref_grad).abs().max().item():.2e} "
            f"(max |grad| {ref_grad.abs().max().item():.2e}): OK"
        )
    if OURS in methods:
        import uaal_ext

        with torch.no_grad():
            ours0 = uaal_ext.uaal_cross_entropy(x, t, ignore_index=IGNORE_INDEX, alpha=0.0)
            ce = plain_cross_entropy(x, t)
        torch.testing.assert_close(ours0, ce, rtol=1e-4, atol=0)
        log(f"- uaal_ext alpha=0 vs F.cross_entropy: {ours0.item():.6f} vs {ce.item():.6f}: OK")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def build_table(rows: list[dict]) -> tuple[str, list[str]]:
    head = (
        "| shape | method | fwd ms | fwd+bwd ms | uaal_ext speed-up fwd | "
        "uaal_ext speed-up fwd+bwd | peak extra mem (x logits) | floor ms fwd / fwd+bwd | "
        "fwd+bwd / floor | bars |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    bars = []
    spec_shapes = {shape_label(parse_shape(s)) for s in FULL_SHAPES.split(",")}
    by_cell = {(r["shape"], r["method"]): r for r in rows}
    for r in rows:
        bar = ""
        n_bars = len(bars)
        fb = r["fwd_bwd_speedup"]
        if r["method"] == "torch.compile(reference)" and fb is not None:
            ok = fb >= BAR_VS_COMPILE
            bar = f"fwd+bwd >= {BAR_VS_COMPILE:g}x: {mark(ok)}"
            bars.append(
                f"{r['shape']}: uaal_ext fwd+bwd vs torch.compile(reference) "
                f"{fb:.2f}x (bar >= {BAR_VS_COMPILE:g}x): {mark(ok)}"
            )
        elif r["method"] == "F.cross_entropy" and fb is not None:
            ok = fb >= BAR_VS_CE
            bar = f"fwd+bwd >= {BAR_VS_CE:g}x: {mark(ok)}"
            bars.append(
                f"{r['shape']}: uaal_ext fwd+bwd vs eager F.cross_entropy {fb:.2f}x (bar >= {BAR_VS_CE:g}x): {mark(ok)}"
            )
        elif r["method"] == OURS:
            parts = []
            ok = r["fwd_bwd_over_floor"] <= BAR_FLOOR
            parts.append(f"<= {BAR_FLOOR:g}x floor: {mark(ok)}")
            bars.append(
                f"{r['shape']}: uaal_ext fwd+bwd / floor {r['fwd_bwd_over_floor']:.2f}x "
                f"(bar <= {BAR_FLOOR:g}x): {mark(ok)}"
            )
            mem = r["mem_x_logits"]
            if mem is not None and not math.isnan(mem):
                ok = mem <= BAR_MEMORY
                parts.append(f"mem <= {BAR_MEMORY:g}x: {mark(ok)}")
                bars.append(
                    f"{r['shape']}: uaal_ext peak extra memory {mem:.3f}x logits (bar <= {BAR_MEMORY:g}x): {mark(ok)}"
                )
            bar = "; ".join(parts)
        elif r["method"] == BY_WEIGHT:
            # Its own baseline is the compiled reference with the same (by-weight) mean.
            parts = [f"<= {BAR_FLOOR:g}x floor: {mark(r['fwd_bwd_over_floor'] <= BAR_FLOOR)}"]
            bars.append(
                f"{r['shape']}: {BY_WEIGHT} fwd+bwd / floor {r['fwd_bwd_over_floor']:.2f}x "
                f"(bar <= {BAR_FLOOR:g}x): {mark(r['fwd_bwd_over_floor'] <= BAR_FLOOR)}"
            )
            compiled = by_cell.get((r["shape"], COMPILED_BY_WEIGHT))
            if compiled is not None and compiled["fwd_bwd_ms"] and r["fwd_bwd_ms"]:
                ratio = compiled["fwd_bwd_ms"] / r["fwd_bwd_ms"]
                ok = ratio >= BAR_VS_COMPILE
                parts.append(f"{ratio:.2f}x {COMPILED_BY_WEIGHT} >= {BAR_VS_COMPILE:g}x: {mark(ok)}")
                bars.append(
                    f"{r['shape']}: {BY_WEIGHT} fwd+bwd vs {COMPILED_BY_WEIGHT} {ratio:.2f}x "
                    f"(bar >= {BAR_VS_COMPILE:g}x): {mark(ok)}"
                )
            bar = "; ".join(parts)
        if r["shape"] not in spec_shapes and bar:  # overheads dominate small shapes
            bar = "indicative: " + bar
            bars[n_bars:] = [b + " (indicative: not a bar shape)" for b in bars[n_bars:]]
        lines.append(
            f"| {r['shape']} | {r['method']} | {fmt_ms(r['fwd_ms'])} | {fmt_ms(r['fwd_bwd_ms'])} | "
            f"{fmt(r['fwd_speedup'], suffix='x')} | {fmt(r['fwd_bwd_speedup'], suffix='x')} | "
            f"{fmt(r['mem_x_logits'], '.3f')} | {fmt_ms(r['floor_fwd_ms'])} / {fmt_ms(r['floor_fwd_bwd_ms'])} | "
            f"{r['fwd_bwd_over_floor']:.2f}x | {bar} |"
        )
    return "\n".join(lines), bars


def layout_comparison(rows: list[dict]) -> list[str]:
    """uaal_ext's fwd+bwd time with channels-last logits over its time with contiguous ones, per shape
    and per uaal_ext method, each with the bar (docs/performance.md). The ratio is the median of the
    per-round ratios (both layouts are timed in every round); the medians of the times are beside it."""
    by_key = {(r["base_shape"], r["method"], r["layout"]): r for r in rows}
    lines = []
    for (shape, method, layout), r in by_key.items():
        contiguous = by_key.get((shape, method, "contiguous"))
        if layout != "channels_last" or contiguous is None or not method.startswith("uaal_ext"):
            continue
        pairs = zip(r["fwd_bwd_rounds_ms"], contiguous["fwd_bwd_rounds_ms"])
        ratio = statistics.median(cl / nchw for cl, nchw in pairs)
        lines.append(
            f"{shape}, {method}: {r['fwd_bwd_ms']:.1f} ms vs {contiguous['fwd_bwd_ms']:.1f} ms (medians); "
            f"median of the per-round ratios {ratio:.2f}x {mark(ratio <= 1.2)}"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--shapes", default=None, help=f"comma-separated NxCxHxW (default {FULL_SHAPES}; --quick: {QUICK_SHAPES})"
    )
    p.add_argument("--repeat", type=int, default=None, help="timed rounds, median reported (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per method and step")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--quick", action="store_true", help="small shapes, 3 rounds, 256 MiB copy")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument(
        "--layouts",
        default="contiguous,channels_last",
        help="logits layouts, comma-separated: contiguous (NCHW), channels_last (default both)",
    )
    p.add_argument("--bw-mib", type=int, default=None, help="copy size for the bandwidth (default 1024)")
    p.add_argument(
        "--output",
        default=None,
        help="Markdown output (default results/loss_cpu.md, --quick: results/loss_cpu_quick.md)",
    )
    p.add_argument("--measure-memory", metavar="METHOD", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    shapes = [parse_shape(s) for s in (args.shapes or (QUICK_SHAPES if args.quick else FULL_SHAPES)).split(",")]
    if args.measure_memory:  # child process: one method, one shape, one JSON line
        print(json.dumps(measure_memory(args.measure_memory, shapes[0], args.threads, args.layouts.split(",")[0])))
        return 0

    repeat = args.repeat or (3 if args.quick else 5)
    bw_mib = args.bw_mib or (256 if args.quick else 1024)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "eager reference" not in names:
        names.insert(1, "eager reference")  # needed for the correctness check
    torch.set_num_threads(args.threads)

    log = Report(args, "loss_cpu")

    cmdline = log_report_header(log, "UAAL cross-entropy, CPU fp32")
    try:
        import uaal_ext

        log(f"- uaal_ext build_info: `{uaal_ext.build_info()}`")
    except Exception as exc:  # noqa: BLE001
        if OURS in names:
            print(
                f"error: uaal_ext is not importable ({type(exc).__name__}: {exc}); "
                f"run with --methods without uaal_ext to time the baselines only",
                file=sys.stderr,
            )
            return 2
    log(
        f"- setting: ignore_index={IGNORE_INDEX} (~{IGNORED_FRACTION:.0%} of pixels), reduction mean, "
        f"alpha={ALPHA:g}, exponent={EXPONENT:g}, uncertainty = normalized entropy of the logits"
    )
    log(
        f"- timing: median of {repeat} rounds after {args.warmup} warm-up calls, methods interleaved "
        f"in each round; fwd = training-mode forward (logits require grad), fwd+bwd adds backward() "
        f"of the mean loss"
    )

    bw = copy_bandwidth(bw_mib << 20, repeat=max(repeat, 5))
    log(
        f"- copy bandwidth: {bw / 1e9:.1f} GB/s ({bw_mib} MiB float32 `copy_`, read + write counted, "
        f"median of {max(repeat, 5)}, {args.threads} threads)"
    )
    log(
        "- floor: forward reads the logits once (L bytes), backward reads them once and writes the "
        "gradient once: fwd L/bw, fwd+bwd 3L/bw (targets and per-pixel tensors left out); "
        f"{BY_WEIGHT}: a tensor of the logits' size moves once more (the kept softmax read and "
        "overwritten by the gradient): fwd 2L/bw, fwd+bwd 4L/bw"
    )
    log()
    log("## Correctness (before timing)")
    log()
    check_baseline_against_reference(log)

    rows = []
    memory_note = None
    held_notes: list[str] = []
    load_notes: list[str] = []
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    for shape in shapes:
        # Both layouts are timed in the same rounds (layout by layout, method by method within a
        # round), so that the channels-last / contiguous ratio is a paired comparison.
        setups = {}
        for layout in layouts:
            label = shape_label(shape) + ("" if layout == "contiguous" else " channels-last")
            print(f"\n[{label}] building methods (torch.compile compiles now) ...", flush=True)
            x, t = make_inputs(shape, layout=layout)
            methods = {name: get_method(name) for name in names}
            check_correctness(methods, x, t, lambda s, label=label: log(f"{s} [{label}]"))
            for fn in methods.values():  # warm-up (and compilation) for both steps
                for step in (run_fwd, run_fwd_bwd):
                    for _ in range(args.warmup):
                        time_once(step, fn, x, t)
            setups[layout] = (label, x, t, methods)
        times = {layout: {name: {"fwd": [], "fwd_bwd": []} for name in names} for layout in layouts}
        snap = cpu_snapshot()
        for r in range(repeat):
            print(f"[{shape_label(shape)}] round {r + 1}/{repeat}", flush=True)
            for layout, (_, x, t, methods) in setups.items():
                for name, fn in methods.items():
                    times[layout][name]["fwd"].append(time_once(run_fwd, fn, x, t))
                    times[layout][name]["fwd_bwd"].append(time_once(run_fwd_bwd, fn, x, t))
        busy = other_load(snap, cpu_snapshot())
        load_notes.append(
            f"{shape_label(shape)}: other processes used {busy:.0%} of the machine's CPUs during "
            f"the timed rounds" + (" -- WARNING: timings disturbed, rerun on an idle machine" if busy > 0.1 else "")
        )
        logits_bytes = setups[layouts[0]][1].numel() * setups[layouts[0]][1].element_size()
        labels = {layout: setup[0] for layout, setup in setups.items()}
        del setups, x, t, methods
        gc.collect()
        for layout in layouts:
            label = labels[layout]
            med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times[layout].items()}
            for name in names:
                mem = None
                if not args.no_memory:
                    print(f"[{label}] peak memory: {name} (fresh subprocess) ...", flush=True)
                    m = memory_in_subprocess(name, shape, args.threads, layout)
                    mem = m["extra_x_logits"]
                    held = m.get("held_between_calls_x_logits", 0.0)
                    if held > 0.05:
                        held_notes.append(
                            f"{label} {name}: keeps {held:.2f}x logits between calls (counted in its peak)"
                        )
                    memory_note = memory_note or m.get("how")
                    if m.get("how", "").startswith("failed"):
                        print(f"  {m['how']}", file=sys.stderr)
                ours = med.get(OURS)
                reads_fwd, reads_fwd_bwd = FLOOR_LOGITS.get(name, DEFAULT_FLOOR_LOGITS)
                floor_fwd, floor_fb = reads_fwd * logits_bytes / bw, reads_fwd_bwd * logits_bytes / bw
                rows.append(
                    {
                        "shape": label,
                        "method": name,
                        "fwd_ms": med[name]["fwd"] * 1e3,
                        "fwd_bwd_ms": med[name]["fwd_bwd"] * 1e3,
                        "fwd_speedup": med[name]["fwd"] / ours["fwd"] if ours else None,
                        "fwd_bwd_speedup": med[name]["fwd_bwd"] / ours["fwd_bwd"] if ours else None,
                        "mem_x_logits": mem,
                        "floor_fwd_ms": floor_fwd * 1e3,
                        "floor_fwd_bwd_ms": floor_fb * 1e3,
                        "fwd_bwd_over_floor": med[name]["fwd_bwd"] / floor_fb,
                        "logits_bytes": logits_bytes,
                        "layout": layout,
                        "base_shape": shape_label(shape),
                        "fwd_bwd_rounds_ms": [v * 1e3 for v in times[layout][name]["fwd_bwd"]],
                    }
                )

    table, bars = build_table(rows)
    log()
    log("## Results")
    log()
    log(
        "Speed-up = this method's median time / uaal_ext's median time (> 1: uaal_ext is faster). "
        "fwd+bwd / floor is this method's fwd+bwd time over the bytes-moved floor."
    )
    log()
    log(table)
    log()
    for note in load_notes:
        log(f"- {note}")
    log()
    if args.no_memory:
        log("Peak memory: not measured (--no-memory).")
    else:
        log(
            f"Peak extra memory: peak RSS during one fwd+bwd (gradient included) minus the RSS "
            f"with the inputs allocated, in a fresh subprocess per method, after warm-up calls; "
            f"memory a method keeps between calls counts (torch.compile: baseline after compiling); "
            f"glibc malloc with MALLOC_MMAP_THRESHOLD_="
            f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 128 * 1024)} so freed big blocks go back to "
            f"the OS; peak read as {memory_note}. Divided by the logits' size."
        )
        for note in held_notes:
            log(f"- {note}")
    log()
    layout_lines = layout_comparison(rows)
    if layout_lines:
        log("## Channels-last against contiguous logits (uaal_ext, fwd+bwd; bar: <= 1.2x)")
        log()
        for line in layout_lines:
            log(f"- {line}")
        log()
    if bars:
        log("## Bars (docs/performance.md)")
        log()
        for b in bars:
            log(f"- {b}")
        log()

    log.write(
        {
            "command": cmdline,
            "torch": torch.__version__,
            "threads": args.threads,
            "bandwidth_bytes_per_s": bw,
            "rows": rows,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
