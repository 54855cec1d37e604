"""GPU benchmarks of the one-call GPU check (``scripts/gpu_check.sh``): every number a ratio measured
in one run, with CUDA events, against the PyTorch baselines and the bytes-moved floor.

- **loss**: fwd+bwd of the UAAL loss (entropy weighting, mean; and by weight) against eager
  ``F.cross_entropy`` (no weighting) and ``torch.compile`` of the eager UAAL reference, float32 and
  bfloat16 logits, contiguous and channels-last; the floor is 3 x the logits' bytes (read twice,
  gradient written once) at the device copy bandwidth measured in the same run;
- **scores**: per-pixel Entropy, Margin and BALD maps against their eager formulas;
- **kernel noise**: K = 5 copies of the ResNet-50 DeepLabv3+ conv/linear weights against a per-tensor
  eager loop; **perturbation statistics** (K = 5) against eager softmax / norms;
- **training step**: DeepLabv3+ at 8 x 512x1024 under AMP, channels-last: standard, UAAL with K = 1
  and K = 5 kernel-noise passes, batched (vmap) and sequential, and a no-grad forward;
- **projection**: the GPU-hours of each shipped paper config (``configs/{cityscapes,ade20k}_*.yaml``)
  on this GPU, from the measured step and forward times (assumptions listed with the table).

``--smoke`` runs the same code at tiny sizes (the ``small`` model, 2 x 64x128) on any device, with
torch.compile's "eager" backend: the test suite runs it on the CPU so the script cannot rot.
``--budget`` seconds bound the whole run: parts left when it is spent are listed as skipped.

    python benchmarks/bench_gpu.py --output-dir OUT            # on the GPU: OUT/gpu_benchmarks_cuda.md (+ .json)
    python benchmarks/bench_gpu.py --smoke --device cpu --output-dir OUT
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loss_cases import IGNORE_INDEX, make_inputs, plain_cross_entropy, uaal_loss_eager  # noqa: E402
from uncertainty_cases import kernel_noise_eager, model_weights, perturbation_statistics_eager  # noqa: E402

import uaal_ext  # noqa: E402
from uaal_ext.ops import kernel_noise, perturbation_statistics, pixel_score_map, uaal_cross_entropy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FULL = dict(
    loss_shapes=[(8, 19, 512, 1024), (8, 150, 512, 512)],
    score_shape=(8, 19, 512, 1024),
    bald_shape=(10, 2, 19, 512, 1024),
    stats_shape=(8, 19, 256, 512),
    step_batch=(8, 512, 1024),
    step_models=("resnet50", "mobilenetv3", "xception65"),
    repeat=10,
    warmup=3,
)
SMOKE = dict(
    loss_shapes=[(2, 19, 16, 32), (2, 150, 8, 8)],
    score_shape=(2, 19, 16, 32),
    bald_shape=(3, 2, 19, 16, 32),
    stats_shape=(2, 19, 16, 32),
    step_batch=(2, 64, 128),
    step_models=("small",),
    repeat=2,
    warmup=1,
)
K = 5
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


class Clock:
    """Median seconds of a call: CUDA events on the GPU (no host overhead counted), wall time elsewhere."""

    def __init__(self, device: torch.device, repeat: int, warmup: int) -> None:
        self.device, self.repeat, self.warmup = device, repeat, warmup

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeat):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
        return statistics.median(times)


def copy_bandwidth(device: torch.device, clock: Clock, nbytes: int) -> float:
    """Bytes/s of a float32 copy on ``device`` (read + write counted)."""
    source = torch.ones(nbytes // 4, device=device)
    target = torch.empty_like(source)
    return 2 * nbytes / clock(lambda: target.copy_(source))


def _backward(loss_fn, logits, target):
    def call():
        logits.grad = None
        loss_fn(logits, target).backward()

    return call


def _uaal(logits, target, by_weight=False):
    return uaal_cross_entropy(logits, target, ignore_index=IGNORE_INDEX, alpha=1.0, normalize_by_weight=by_weight)


def bench_loss(args, clock, bandwidth, report, data) -> None:
    report.table(
        "Loss fwd+bwd (ms; in brackets uaal_ext's speed-up over the row's baseline)",
        ["shape", "dtype", "layout", "uaal_ext", "by weight", "F.cross_entropy", "compile(reference)", "floor", "uaal_ext / floor"],
    )  # fmt: skip
    for shape in args.loss_shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ("contiguous", "channels_last"):
                if report.out_of_time(f"loss {shape} {dtype} {layout}"):
                    return
                logits, target = make_inputs(shape)
                logits = logits.detach().to(args.device, dtype)
                if layout == "channels_last":
                    logits = logits.contiguous(memory_format=torch.channels_last)
                logits.requires_grad_()
                target = target.to(args.device)
                torch._dynamo.reset()
                compiled = torch.compile(uaal_loss_eager, backend=args.compile_backend, dynamic=False)
                # Same loss before any timing: the fused kernel against the compiled reference.
                expected, ours = compiled(logits.detach().float(), target), _uaal(logits.detach(), target)
                tolerance = 1e-4 if dtype == torch.float32 else 2e-2
                if not math.isclose(float(ours), float(expected), rel_tol=tolerance, abs_tol=tolerance):
                    raise AssertionError(f"loss {shape} {dtype}: uaal_ext {float(ours)} vs reference {float(expected)}")
                times = {
                    "uaal_ext": clock(_backward(_uaal, logits, target)),
                    "by weight": clock(_backward(lambda x, t: _uaal(x, t, True), logits, target)),
                    "F.cross_entropy": clock(_backward(plain_cross_entropy, logits, target)),
                    "compile(reference)": clock(_backward(compiled, logits, target)),
                }
                floor = 3 * logits.numel() * logits.element_size() / bandwidth
                ours_ms = times["uaal_ext"] * 1e3
                cells = [f"{ours_ms:.3g}", f"{times['by weight'] * 1e3:.3g}"]
                cells += [
                    f"{times[k] * 1e3:.3g} ({times[k] / times['uaal_ext']:.2f}x)"
                    for k in ("F.cross_entropy", "compile(reference)")
                ]
                cells += [f"{floor * 1e3:.3g}", f"{times['uaal_ext'] / floor:.2f}"]
                report.row(["x".join(map(str, shape)), DTYPE_NAMES[dtype], layout, *cells])
                data.setdefault("loss", []).append(
                    dict(shape=shape, dtype=DTYPE_NAMES[dtype], layout=layout, floor=floor, **times)
                )


def bench_scores(args, clock, report, data) -> None:
    if report.out_of_time("scores"):
        return
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(args.score_shape, generator=generator).to(args.device)
    samples = torch.randn(args.bald_shape, generator=generator).to(args.device)

    def entropy_eager(x):
        logp = torch.log_softmax(x, dim=1)
        return -(logp.exp() * logp).sum(1)

    def margin_eager(x):
        top = torch.softmax(x, dim=1).topk(2, dim=1).values
        return 1 - (top[:, 0] - top[:, 1])

    def bald_eager(x):
        logp = torch.log_softmax(x, dim=2)
        mean = logp.exp().mean(0)
        return -(mean * mean.clamp_min(1e-30).log()).sum(1) + (logp.exp() * logp).sum(2).mean(0)

    report.table("Acquisition scores per pixel (ms)", ["score", "input", "layout", "uaal_ext", "eager", "speed-up"])
    for layout in ("contiguous", "channels_last"):
        for name, inputs, eager in (
            ("entropy", logits, entropy_eager),
            ("margin", logits, margin_eager),
            ("bald", samples, bald_eager),
        ):
            inputs = classes_last(inputs) if layout == "channels_last" else inputs
            torch.testing.assert_close(pixel_score_map(inputs, name), eager(inputs), rtol=1e-4, atol=1e-4)
            ours, theirs = clock(lambda: pixel_score_map(inputs, name)), clock(lambda: eager(inputs))
            report.row(
                [
                    name,
                    "x".join(map(str, inputs.shape)),
                    layout,
                    f"{ours * 1e3:.3g}",
                    f"{theirs * 1e3:.3g}",
                    f"{theirs / ours:.2f}x",
                ]
            )
            data.setdefault("scores", []).append(
                dict(score=name, shape=list(inputs.shape), layout=layout, uaal_ext=ours, eager=theirs)
            )


def classes_last(logits: torch.Tensor) -> torch.Tensor:
    """`logits` (N, C, *spatial) or stacked samples (T, N, C, *spatial) with each pixel's classes
    contiguous, as a channels-last model gives them (the samples stacked outermost)."""
    channel_dim = logits.dim() - 3
    return logits.movedim(channel_dim, -1).contiguous().movedim(-1, channel_dim)


def bench_perturbation(args, clock, report, data) -> None:
    if report.out_of_time("kernel noise"):
        return
    from uaal_ext.experiment.models import build_model

    model = build_model("resnet50" if not args.smoke else "small", 19).to(args.device)
    weights = model_weights(model)
    numel = sum(w.numel() for w in weights)
    report.table("Perturbation (ms)", ["op", "input", "uaal_ext", "eager", "speed-up"])
    ours = clock(lambda: kernel_noise(weights, K, 0.01, seed=0, offset=0))
    theirs = clock(lambda: kernel_noise_eager(weights, K, 0.01, per_filter=False))
    label = f"{len(weights)} weights, {numel / 1e6:.1f}M, K={K}"
    report.row(["kernel_noise", label, f"{ours * 1e3:.3g}", f"{theirs * 1e3:.3g}", f"{theirs / ours:.2f}x"])
    data["kernel_noise"] = dict(weights=len(weights), numel=numel, uaal_ext=ours, eager=theirs)
    generator = torch.Generator().manual_seed(2)
    clean = torch.randn(args.stats_shape, generator=generator).mul_(3).to(args.device)
    perturbed = clean + 0.05 * torch.randn((K, *args.stats_shape), generator=generator).to(args.device)
    for layout in ("contiguous", "channels_last"):
        if layout == "channels_last":
            clean, perturbed = classes_last(clean), classes_last(perturbed)
        ours = clock(lambda: perturbation_statistics(clean, perturbed))
        theirs = clock(lambda: perturbation_statistics_eager(clean, perturbed))
        label = f"K={K} x " + "x".join(map(str, args.stats_shape)) + f", {layout}"
        report.row(
            ["perturbation_statistics", label, f"{ours * 1e3:.3g}", f"{theirs * 1e3:.3g}", f"{theirs / ours:.2f}x"]
        )
        data.setdefault("perturbation_statistics", []).append(
            dict(shape=list(args.stats_shape), layout=layout, uaal_ext=ours, eager=theirs)
        )


def _step_cases():
    yield "standard", dict(mode="standard"), None
    yield "UAAL K=1", dict(mode="uaal", num_samples=1), True
    yield f"UAAL K={K} batched (vmap)", dict(mode="uaal", num_samples=K), True
    yield f"UAAL K={K} sequential", dict(mode="uaal", num_samples=K), False


def bench_steps(args, clock, report, data) -> None:
    from uaal_ext.experiment.models import build_model
    from uaal_ext.experiment.training import TrainConfig, make_criterion, train_step

    n, h, w = args.step_batch
    use_amp = args.device.type == "cuda"
    report.table(
        f"Training step, DeepLabv3+ at {n} x {h}x{w}, AMP on CUDA, channels-last (ms)",
        ["model", "case", "step", "x standard", "no-grad forward"],
    )
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(n, 3, h, w, generator=generator).to(args.device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 19, (n, h, w), generator=generator).to(args.device)
    for name in args.step_models:
        torch.manual_seed(0)
        model = build_model(name, 19).to(args.device).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        model.eval()
        with torch.no_grad(), torch.autocast(args.device.type, dtype=torch.float16, enabled=use_amp):
            forward = clock(lambda: model(images))
        model.train()
        times = {}
        for case, options, batched in _step_cases():
            if (name != "resnet50" and not args.smoke) and "K=1" in case:
                continue  # the other backbones: standard and K=5 only (the projection's inputs)
            if report.out_of_time(f"step {name} {case}"):
                return
            criterion, source = make_criterion(TrainConfig(**options, epochs=1))
            criterion.to(args.device)
            if source is not None:
                source.batched = batched
            times[case] = clock(
                lambda: train_step(model, (images, labels), criterion, optimizer, source, scaler=scaler, amp=use_amp)
            )
            ratio = times[case] / times["standard"]
            report.row([name, case, f"{times[case] * 1e3:.4g}", f"{ratio:.2f}", f"{forward * 1e3:.4g}"])
        data.setdefault("steps", {})[name] = dict(images=[n, h, w], forward=forward, **times)


def project_gpu_hours(args, report, data) -> None:
    """GPU-hours of each paper config from the measured times (assumptions printed with it)."""
    steps = data.get("steps", {})
    pool = {"cityscapes": (2975, 500, 1024 * 2048), "ade20k": (20210, 2000, 512 * 683)}  # train, val, full-image pixels
    n, h, w = args.step_batch
    report.table(
        "Projected GPU-hours of the paper configs on this GPU",
        ["config", "trainings", "optimizer steps", "training h", "selection + evaluation h", "total h"],
    )
    for path in sorted(glob.glob(str(REPO / "configs" / "*_*.yaml"))):
        config = yaml.safe_load(Path(path).read_text())
        # A smoke run times the small model only: it stands in for every backbone, to run this code.
        times = steps.get(config.get("model"), steps.get("small") if args.smoke else None)
        if config.get("dataset") not in pool or times is None:
            continue
        crop = config["image_size"][0] * config["image_size"][1] / (h * w)  # the measured crop is h x w
        uaal_step = min(v for k, v in times.items() if f"K={K}" in k)
        per_mode = {"standard": times["standard"], "uaal": uaal_step, "uaal_select": times["standard"] + uaal_step}
        rounds = 1 + len(config["methods"]) * len(config["budgets"])
        trainings = len(config["seeds"]) * len(config["modes"]) * rounds
        training = sum(
            len(config["seeds"]) * rounds * config["iterations"] * per_mode[mode] * crop for mode in config["modes"]
        )
        train_images, val_images, pixels = pool[config["dataset"]]
        forward_per_image = times["forward"] / n * pixels / (h * w)
        forwards = {"random": 0, "entropy": 1, "margin": 1, "mc_entropy": 10, "bald": 10, "noise_stability": 1 + K}
        selection = (
            sum(
                forwards.get(m, 1 + K) * train_images * forward_per_image * len(config["budgets"])
                for m in config["methods"]
            )
            * len(config["seeds"])
            * len(config["modes"])
        )
        evaluation = trainings * val_images * forward_per_image
        hours = (training + selection + evaluation) / 3600
        report.row([
            Path(path).stem, str(trainings), f"{trainings * config['iterations']:,}", f"{training / 3600:.1f}",
            f"{(selection + evaluation) / 3600:.1f}", f"{hours:.1f}",
        ])  # fmt: skip
        data.setdefault("gpu_hours", {})[Path(path).stem] = hours
    report.line(
        f"Assumptions: a step's time scales with the crop's pixels (measured at {h}x{w}); UAAL steps take the "
        f"faster of batched and sequential K={K}; selection scores the whole unlabeled pool each round with the "
        f"method's forwards (MC-Dropout T=10, Noise Stability 1+K) on full images (CityScapes 1024x2048, ADE20K "
        f"about 512x683), evaluation one forward per validation image per trained model; data loading and "
        f"checkpoints are not counted."
    )


class Report:
    def __init__(self, budget: float) -> None:
        self.lines: list[str] = []
        self.started, self.budget = time.perf_counter(), budget
        self.skipped: list[str] = []

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, title: str, columns: list[str]) -> None:
        self.line()
        self.line(f"## {title}")
        self.line()
        self.line("| " + " | ".join(columns) + " |")
        self.line("|" + "---|" * len(columns))

    def row(self, cells: list[str]) -> None:
        self.line("| " + " | ".join(cells) + " |")

    def out_of_time(self, what: str) -> bool:
        if time.perf_counter() - self.started < self.budget:
            return False
        self.skipped.append(what)
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, torch.compile backend 'eager'")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds; parts left after it are skipped")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    args.device = torch.device(args.device)
    for key, value in (SMOKE if args.smoke else FULL).items():
        setattr(args, key, value)
    args.compile_backend = "eager" if args.smoke else "inductor"
    clock = Clock(args.device, args.repeat, args.warmup)
    report = Report(args.budget)
    name = "gpu_benchmarks_smoke" if args.smoke else f"gpu_benchmarks_{args.device.type}"
    report.line(f"# GPU benchmarks ({'smoke run, tiny sizes' if args.smoke else 'full sizes'})")
    report.line()
    report.line(f"- command: `python benchmarks/bench_gpu.py {' '.join(sys.argv[1:])}`")
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    report.line(
        f"- device: {device_name}; torch {torch.__version__}; uaal_ext build {json.dumps(uaal_ext.build_info())}"
    )
    bandwidth = copy_bandwidth(args.device, clock, 256 << 20 if not args.smoke else 8 << 20)
    report.line(f"- copy bandwidth measured in this run: {bandwidth / 1e9:.0f} GB/s (read + write counted)")
    data: dict = {"device": device_name, "bandwidth": bandwidth}
    for part in (bench_loss, bench_scores, bench_perturbation, bench_steps):
        started = time.perf_counter()
        arguments = (args, clock, bandwidth, report, data) if part is bench_loss else (args, clock, report, data)
        part(*arguments)
        data.setdefault("part_seconds", {})[part.__name__] = time.perf_counter() - started
    project_gpu_hours(args, report, data)
    if report.skipped:
        report.line()
        report.line(f"Skipped (the {args.budget:.0f} s budget was spent): {', '.join(report.skipped)}")
    data["skipped"] = report.skipped
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(report.lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"written: {out / name}.md (and .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
