#!/usr/bin/env python
"""Cost of a UAAL training step with kernel-noise uncertainty against a standard step, on CPU.

One `uaal_ext.experiment.training.train_step` (forward, uncertainty, loss, backward, SGD step) of DeepLabv3+
(`uaal_ext.experiment.models.build_model`, random init) in training mode: the standard step (UAALLoss with
alpha = 0, plain cross-entropy) against the UAAL step with `KernelNoise` (eta 0.01, K perturbed
passes that replay the training forward's dropout masks, noise generation and statistics included).
Also one no-grad forward, for the cost of a single pass: K perturbed passes cannot cost less than
K such forwards without their dropout draws, so "1 + K x forward" is printed as the sequential
floor. Bar (issue: training): the UAAL step costs at most (1 + 0.25 K) standard steps.

Runs as ``uaal`` trains by default: channels-last model and images (``TrainConfig.channels_last``)
and glibc malloc keeping freed memory (``uaal_ext.experiment.runtime.keep_freed_memory``); ``--layout
contiguous`` and ``--malloc default`` measure without them (malloc settings are process-wide: one
setting per run).

    python benchmarks/bench_training_step.py            # mobilenetv3, resnet50; batch 4, 256x512; K = 1, 5
    python benchmarks/bench_training_step.py --quick    # small model, 2x3x64x128: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Report, fill_defaults, load_note, log_report_header, run_rounds

NUM_CLASSES = 19
FULL = {"models": "mobilenetv3,resnet50", "image": "4x3x256x512", "ks": "1,5", "repeat": 3}
QUICK = {"models": "small", "image": "2x3x64x128", "ks": "1,5", "repeat": 1}


def make_step(model, images, labels, config):
    """A closure running one training step of `config` on the fixed batch (the model keeps training)."""
    from uaal_ext.experiment.training import make_criterion, train_step

    criterion, source = make_criterion(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=config.momentum, weight_decay=config.weight_decay)
    return lambda: train_step(model, (images, labels), criterion, optimizer, source)


def bench_model(name: str, shape, ks, repeat: int, layout: torch.memory_format, log) -> list[dict]:
    from uaal_ext.experiment.models import build_model
    from uaal_ext.experiment.training import TrainConfig

    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES).train().to(memory_format=layout)
    images = torch.randn(*shape).contiguous(memory_format=layout)
    labels = torch.randint(0, NUM_CLASSES, (shape[0], *shape[2:]))

    def forward():
        with torch.no_grad():
            return model(images)

    calls = {
        "forward (no grad)": forward,
        "standard step": make_step(model, images, labels, TrainConfig(mode="standard")),
    }
    for k in ks:
        config = TrainConfig(mode="uaal", uncertainty="kernel_noise", eta=0.01, num_samples=k)
        calls[f"uaal step, kernel noise K={k}"] = make_step(model, images, labels, config)
    label = f"{name} {'x'.join(map(str, shape))}"
    times, busy = run_rounds(calls, repeat=repeat, warmup=1, label=label)
    log(f"- {load_note(label, busy)}")
    standard = times["standard step"]
    forward = times["forward (no grad)"] / standard
    rows = [
        {
            "model": name,
            "what": "forward (no grad)",
            "s": times["forward (no grad)"],
            "ratio": forward,
            "bar": None,
            "floor": None,
        }
    ]
    rows.append({"model": name, "what": "standard step", "s": standard, "ratio": 1.0, "bar": None, "floor": None})
    for k in ks:
        t = times[f"uaal step, kernel noise K={k}"]
        rows.append(
            {
                "model": name,
                "what": f"uaal step, kernel noise K={k}",
                "s": t,
                "ratio": t / standard,
                "bar": 1 + 0.25 * k,
                "floor": 1 + k * forward,
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help=f"comma-separated presets (default {FULL['models']})")
    p.add_argument("--image", default=None, help=f"batch NxCxHxW (default {FULL['image']})")
    p.add_argument("--ks", default=None, help=f"K values (default {FULL['ks']})")
    p.add_argument("--repeat", type=int, default=None, help="timed rounds, median reported (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--layout",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="memory format of model and images (default channels_last, as uaal trains)",
    )
    p.add_argument(
        "--malloc",
        choices=("kept", "default"),
        default="kept",
        help="kept: uaal_ext.experiment.runtime.keep_freed_memory() (default, as uaal runs); default: glibc's",
    )
    p.add_argument("--quick", action="store_true", help="small model and batch, 1 round")
    p.add_argument("--output", default=None, help="Markdown output (default results/training_step_cpu.md)")
    args = p.parse_args(argv)
    fill_defaults(args, FULL, QUICK)
    shape = tuple(int(v) for v in args.image.split("x"))
    ks = [int(k) for k in args.ks.split(",")]
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from uaal_ext.experiment.runtime import keep_freed_memory

    malloc = "glibc defaults"
    if args.malloc == "kept":
        malloc = "freed memory kept (keep_freed_memory)" if keep_freed_memory() else "not glibc: defaults"
    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format

    log = Report(args, "training_step_cpu")

    import uaal_ext

    log_report_header(log, "UAAL training step with kernel-noise uncertainty vs a standard step, CPU fp32")
    log(f"- uaal_ext build_info: `{uaal_ext.build_info()}`")
    log(
        f"- batch {args.image}, {NUM_CLASSES} classes, models in training mode (dropout and batch statistics "
        f"active), eta 0.01, granularity tensor; median of {args.repeat} rounds after one untimed call, "
        f"the calls interleaved in each round"
    )
    log(f"- layout {args.layout}; malloc: {malloc}")
    log(
        "- the UAAL step: training forward recording its dropout masks, KernelNoise (noise for every conv "
        "weight in one kernel_noise call, K perturbed forwards that reuse the recorded masks, "
        "perturbation_statistics), the fused loss, backward, SGD"
    )
    log("- sequential floor: 1 + K x (no-grad forward / standard step), what K plain forwards cost on top of the step")
    log()
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name.strip(), shape, ks, args.repeat, layout, log)
    log()
    log("| model | call | s | x standard step | sequential floor | bar (x standard step) |")
    log("|---|---|---|---|---|---|")
    bars = []
    for r in rows:
        bar = ""
        if r["bar"] is not None:
            verdict = "PASS" if r["ratio"] <= r["bar"] else "FAIL"
            bar = f"<= {r['bar']:.2f}: {verdict}"
            bars.append(
                f"- {r['model']} {r['what']}: {r['ratio']:.2f}x a standard step (bar <= {r['bar']:.2f}x): {verdict}"
            )
        floor = f"{r['floor']:.2f}x" if r["floor"] is not None else ""
        log(f"| {r['model']} | {r['what']} | {r['s']:.3f} | {r['ratio']:.2f}x | {floor} | {bar} |")
    log()
    log("## Bars")
    log()
    for line in bars:
        log(line)
    log()
    log(f"Run time: {time.perf_counter() - started:.0f} s.")
    log.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
