#!/usr/bin/env python
"""Train the small DeepLabv3+ preset on the built-in synthetic scenes and report validation mIoU.

A check that the training pipeline learns (models, data, training loop, metrics together), in a few
CPU minutes: the train split with random scale/crop/flip, then mIoU, per-class IoU and pixel
accuracy on the validation split, against chance (a constant prediction of the most frequent class).

    python benchmarks/train_synthetic.py                          # standard training, 20 epochs
    python benchmarks/train_synthetic.py --mode uaal --uncertainty kernel_noise --num-samples 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--train-size", type=int, default=200, help="training images (default 200)")
    p.add_argument("--mode", default="standard", help="standard | uaal")
    p.add_argument("--uncertainty", default="kernel_noise", help="uaal mode: kernel_noise | entropy | mc_dropout")
    p.add_argument("--num-samples", type=int, default=1, help="K (kernel noise) / T (MC-Dropout), default 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="Markdown output (default results/train_synthetic_<mode>.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from uaal_ext.experiment.data import SyntheticScenes, TrainTransform
    from uaal_ext.experiment.models import build_model, count_parameters
    from uaal_ext.experiment.training import TrainConfig, evaluate, train

    image_size = (64, 128)
    train_set = SyntheticScenes(
        "train",
        args.train_size,
        seed=args.seed,
        image_size=image_size,
        transform=TrainTransform(crop_size=image_size, scale_range=(0.75, 1.5)),
    )
    val_set = SyntheticScenes("val", seed=args.seed, image_size=image_size)
    num_classes = SyntheticScenes.NUM_CLASSES
    torch.manual_seed(args.seed)
    model = build_model("small", num_classes)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=8,
        mode=args.mode,
        uncertainty=args.uncertainty,
        num_samples=args.num_samples,
        seed=args.seed,
    )
    started = time.perf_counter()
    result = train(model, train_set, config)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, val_set, num_classes)

    # Chance: every pixel predicted as the most frequent class of the validation split. That class's
    # IoU is its pixel share, every other present class scores 0.
    pixel_frequency, _ = val_set.class_frequencies()
    majority = int(pixel_frequency.argmax())
    chance_iou = float(pixel_frequency[majority])
    chance_miou = chance_iou / int((pixel_frequency > 0).sum())

    cmdline = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    lines = [
        f"# Small preset on synthetic scenes: {args.mode} training",
        "",
        f"- command: `{cmdline}`",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f'- model: `build_model("small", {num_classes})`, {count_parameters(model) / 1e6:.2f}M parameters, '
        f"random init; {args.train_size} training images {image_size[0]}x{image_size[1]} (scale 0.75-1.5, crop, "
        f"flip), {len(val_set)} validation images; {args.epochs} epochs, batch 8, SGD lr 0.01 poly 0.9; "
        f"{torch.get_num_threads()} threads",
        f"- training wall time: {train_seconds:.0f} s ({train_seconds / args.epochs:.1f} s per epoch); "
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}",
        "",
        f"**Validation mIoU {metrics.miou:.3f}**, pixel accuracy {metrics.pixel_accuracy:.3f}, mean class "
        f"accuracy {metrics.mean_class_accuracy:.3f}. Chance (every pixel the most frequent class, "
        f"`{SyntheticScenes.CLASS_NAMES[majority]}`): mIoU {chance_miou:.3f}, pixel accuracy {chance_iou:.3f}.",
        "",
        "| class | IoU | val pixel share |",
        "|---|---|---|",
    ]
    for c, name in enumerate(SyntheticScenes.CLASS_NAMES):
        iou = float(metrics.per_class_iou[c])
        lines.append(f"| {name} | {iou:.3f} | {float(pixel_frequency[c]):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out_path = Path(args.output) if args.output else RESULTS_DIR / f"train_synthetic_{args.mode}.md"
    out_path.write_text(text)
    print(f"written: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
