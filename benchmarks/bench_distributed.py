"""Data-parallel training and sharded pool scoring on the CPU: one process against several (gloo).

Each setting runs in fresh processes: ``P`` processes of ``T`` threads each (``P = 1`` is a plain
process without a group, as ``uaal run`` starts; ``P > 1`` goes through ``torchrun --standalone``),
and every process times the same work:

- **epoch**: ``uaal_ext.experiment.training.train`` of the ``small`` DeepLabv3+ on synthetic 64x128
  images, global batch 8, standard and UAAL (kernel noise, K = 2) training; a one-epoch run first
  (warm-up, not counted), then the seconds per epoch of a two-epoch run;
- **scoring**: ``select_from_pool`` of Entropy and Noise Stability (K = 5) over the pool, each rank
  scoring its share of the batches (``distributed.shard_batches``) and the scores gathered.

Rank 0's times are reported (the ranks wait for each other at the end of every step and gather).
The speed-up columns compare each setting with one process of one thread and with one process of
as many threads as the setting uses in all: the fair baseline on a machine whose cores are all busy.

    python benchmarks/bench_distributed.py            # -> results/distributed_cpu.md (+ .json)
    python benchmarks/bench_distributed.py --quick    # fewer images -> results/distributed_cpu_quick.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, fill_defaults, log_report_header  # noqa: E402

FULL = dict(train_images=96, pool_images=192, settings="1x1,1x2,2x1")
QUICK = dict(train_images=16, pool_images=32, settings="1x1,2x1")
IMAGE_SIZE = (64, 128)
BATCH = 8


def _worker(output: str, train_images: int, pool_images: int) -> None:
    """One process of a setting: times the work and (rank 0) writes the seconds to ``output``."""
    import torch
    from torch.utils.data import DataLoader

    from uaal_ext import distributed
    from uaal_ext.acquisition import select_from_pool
    from uaal_ext.experiment.al.datasets import IndexedImages
    from uaal_ext.experiment.data import SyntheticScenes
    from uaal_ext.experiment.models import build_model
    from uaal_ext.experiment.runtime import keep_freed_memory
    from uaal_ext.experiment.training import TrainConfig, train

    keep_freed_memory()
    distributed.init_from_environment("cpu")
    scenes = SyntheticScenes("train", train_images, image_size=IMAGE_SIZE, seed=0)
    seconds = {}
    for mode, options in (("standard", {}), ("uaal", dict(uncertainty="kernel_noise", num_samples=2))):
        config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.01, mode=mode, amp=False, **options)
        torch.manual_seed(0)
        train(build_model("small", SyntheticScenes.NUM_CLASSES), scenes, config, progress=False)  # warm-up
        torch.manual_seed(0)
        model = build_model("small", SyntheticScenes.NUM_CLASSES)
        result = train(model, scenes, dataclasses.replace(config, epochs=2), progress=False)
        seconds[f"epoch_{mode}"] = result.wall_time / 2

    torch.manual_seed(0)
    model = build_model("small", SyntheticScenes.NUM_CLASSES).eval()
    pool = IndexedImages(SyntheticScenes("pool", pool_images, image_size=IMAGE_SIZE, seed=1))
    loader = DataLoader(pool, batch_sampler=distributed.shard_batches(len(pool), 16))
    gather = distributed.world_size() > 1
    for method in ("entropy", "noise_stability"):
        select_from_pool(model, loader, method, 4, progress=False, gather_ranks=gather, num_samples=5)  # warm-up
        distributed.barrier()
        start = time.perf_counter()
        select_from_pool(model, loader, method, 4, progress=False, gather_ranks=gather, num_samples=5)
        seconds[f"scoring_{method}"] = time.perf_counter() - start
    if distributed.is_main_process():
        Path(output).write_text(json.dumps(seconds))
    distributed.shutdown()


def _run_setting(processes: int, threads: int, args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "seconds.json")
        script = [os.path.abspath(__file__), "--worker", output, "--train-images", str(args.train_images)]
        script += ["--pool-images", str(args.pool_images)]
        launcher = [sys.executable]
        if processes > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([*launcher, *script], env=environment, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(output).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    parser.add_argument("--settings", default=None, help="PxT,... : P processes of T threads (default 1x1,1x2,2x1)")
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--pool-images", type=int, default=None)
    parser.add_argument("--output", default=None, help="report path (default results/distributed_cpu[_quick].md)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one process of a setting
    args = parser.parse_args()
    fill_defaults(args, FULL, QUICK)
    if args.worker:
        _worker(args.worker, args.train_images, args.pool_images)
        return

    settings = [tuple(int(v) for v in text.split("x")) for text in args.settings.split(",")]
    log = Report(args, "distributed_cpu")
    log_report_header(log, "Data-parallel training and sharded scoring on the CPU (gloo)")
    log(f"- work: `small` DeepLabv3+, synthetic {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}; training {args.train_images} images, "
        f"global batch {BATCH}; scoring {args.pool_images} pool images in batches of 16")  # fmt: skip
    log(f"- machine: {os.cpu_count()} CPUs; each setting in fresh processes, rank 0's times")
    log()
    measured = {}
    for processes, threads in settings:
        started = time.perf_counter()
        measured[(processes, threads)] = _run_setting(processes, threads, args)
        print(f"  {processes} x {threads}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    columns = ("epoch_standard", "epoch_uaal", "scoring_entropy", "scoring_noise_stability")
    titles = ("epoch, standard", "epoch, UAAL (K=2)", "scoring, Entropy", "scoring, Noise Stability (K=5)")
    log("Seconds, and in brackets the speed-up over 1 process x 1 thread / over 1 process using as many threads:")
    log()
    log("| processes x threads | " + " | ".join(titles) + " |")
    log("|---|" + "---|" * len(columns))
    single = measured.get((1, 1))
    for (processes, threads), seconds in measured.items():
        same_cores = measured.get((1, processes * threads))
        cells = []
        for column in columns:
            cell = f"{seconds[column]:.2f} s"
            ratios = [
                f"{base[column] / seconds[column]:.2f}x" if base is not None else "-" for base in (single, same_cores)
            ]
            cells.append(f"{cell} ({' / '.join(ratios)})")
        log(f"| {processes} x {threads} | " + " | ".join(cells) + " |")
    log.write({f"{p}x{t}": seconds for (p, t), seconds in measured.items()})


if __name__ == "__main__":
    main()
