"""The ``uaal`` command: active-learning experiments, their reports and figures.

    uaal demo [--quick] [--out DIR]                  the complete comparison on synthetic data
    uaal run --config FILE [--set key=value ...] [--shard I/N] --out DIR
    uaal sweep --config FILE --grid exponent=1,2,3,5 [--grid ...] --out DIR
    uaal report DIR [DIR ...] [--out DIR]
    uaal maps DIR [--out DIR] [--images 0,1]
    uaal info

Every experiment resumes when its command is run again with the same output folder. Bad configs
and unreadable state files end with one line naming the problem (exit status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "demo_config"]

DEMO_OUT = "uaal_demo"


def demo_config(quick: bool = False, device: str = "cpu") -> Any:
    """The demo experiment: Random, Entropy (one pass) and Noise Stability (six passes), standard vs
    UAAL (kernel noise), budgets 10% and 20% of a synthetic pool, 3 seeds, the small model;
    ``quick`` is a smoke run of the same grid (1 seed, a smaller pool, few steps). The README gives
    their wall times as measured; ``configs/synthetic_demo.yaml`` is the same experiment as a file."""
    from .al import ExperimentConfig

    # The study's setting (docs/study/README.md) with one selector fewer, so that 3 seeds fit in
    # about a quarter of an hour on 2 cores: MC-Dropout costs as much as Noise Stability to select.
    # A short schedule (150 steps a round) learns more with a higher rate than DeepLabv3+'s usual
    # 0.01. UAAL is the configuration the study chose and confirmed costs nothing: the config's
    # defaults (sigma over its per-image maximum, the mean divided by sum(w)).
    common = dict(lr=0.1, num_samples=2, methods=("random", "entropy", "noise_stability"), device=device)
    if quick:
        return ExperimentConfig(pool_size=200, val_size=40, seeds=(0,), iterations=40, acquisition_samples=4, **common)
    return ExperimentConfig(
        pool_size=400, val_size=100, seeds=(0, 1, 2), iterations=150, acquisition_samples=5, **common
    )


# ---------------------------------------------------------------------------------------------------
# Subcommands


def _finish(out_dir: str, state: Any, started: float, maps: bool = False) -> None:
    """Report (and figure) of one finished experiment folder, printed where a user looks first."""
    from . import report

    paths = report.write_report([out_dir], os.path.join(out_dir, "report"))
    if maps:
        from .maps import experiment_maps

        paths["maps"] = experiment_maps(out_dir, os.path.join(out_dir, "report", "uncertainty_maps.png"))
    experiments = report.load_experiments([out_dir])
    print()
    print(report.main_table(report.summarize(experiments)))
    print(report.paired_table(experiments))
    print()
    print(f"finished in {time.perf_counter() - started:.0f} s (all sessions: {state.wall_time:.0f} s)")
    for name, path in paths.items():
        print(f"  {name}: {path}")


def _demo(args: argparse.Namespace) -> None:
    from .al import run_experiment

    config = demo_config(quick=args.quick, device=args.device)
    print(
        f"uaal demo: {len(config.methods)} methods x {len(config.modes)} training modes x "
        f"{len(config.seeds)} seed(s), budgets {[f'{b:.0%}' for b in config.budgets]} of a synthetic pool of "
        f"{config.pool_size} images; output in {args.out!r} (rerun the same command to resume)"
    )
    started = time.perf_counter()
    state = run_experiment(config, args.out, progress=not args.no_progress)
    _finish(args.out, state, started, maps=True)


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/4"`` -> ``(1, 4)``."""
    if text is None:
        return None
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard must look like i/n with 0 <= i < n, got {text!r}")
    return shard


def _run(args: argparse.Namespace) -> None:
    from .al import load_config, run_experiment

    config = load_config(args.config, args.set)
    shard = _parse_shard(args.shard)
    started = time.perf_counter()
    state = run_experiment(config, args.out, shard=shard, progress=not args.no_progress)
    from uaal_ext import distributed

    if distributed.is_main_process():  # under torchrun, rank 0 writes and prints the report
        _finish(args.out, state, started)


def _parse_grid(items: Sequence[str]) -> list[tuple]:
    """``["exponent=1,2", "eta=0.01"]`` -> ``[(("exponent", 1), ("eta", 0.01)), ...]`` (the product)."""
    from .al import ExperimentConfig, parse_value

    known = [f.name for f in dataclasses.fields(ExperimentConfig)]
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ValueError(f"--grid must look like key=value1,value2,..., got {item!r}")
        if key not in known:
            raise ValueError(f"--grid: unknown config key {key!r}; the keys are {known}")
        axes.append([(key, parse_value(text)) for text in values.split(",")])
    if len({axis[0][0] for axis in axes}) != len(axes):
        raise ValueError("--grid: each key may be swept once")
    return list(itertools.product(*axes))


def _sweep(args: argparse.Namespace) -> None:
    from . import report
    from .al import load_config, run_experiment

    points = _parse_grid(args.grid)
    configs = []
    for point in points:  # every config is checked before the first one runs
        name = "_".join(f"{key}={value}" for key, value in point)
        configs.append((name, load_config(args.config, [*args.set, *(f"{k}={v}" for k, v in point)])))
    started = time.perf_counter()
    for position, (name, config) in enumerate(configs, 1):
        print(f"uaal sweep: {name} ({position}/{len(configs)})")
        run_experiment(config, os.path.join(args.out, name), progress=not args.no_progress)
    paths = report.write_report([args.out], os.path.join(args.out, "report"))
    print(report.markdown_tables(report.summarize(report.load_experiments([args.out]))))
    print(f"finished in {time.perf_counter() - started:.0f} s")
    for name, path in paths.items():
        print(f"  {name}: {path}")


def _report(args: argparse.Namespace) -> None:
    from . import report

    out = args.out or os.path.join(args.dirs[0], "report")
    paths = report.write_report(args.dirs, out)
    print(report.markdown_tables(report.summarize(report.load_experiments(args.dirs))))
    for name, path in paths.items():
        print(f"  {name}: {path}")


def _maps(args: argparse.Namespace) -> None:
    from .maps import experiment_maps

    out = args.out or os.path.join(args.dir, "report")
    images = tuple(int(i) for i in args.images.split(","))
    methods = tuple(args.methods.split(",")) if args.methods else None
    path = experiment_maps(
        args.dir,
        os.path.join(out, "uncertainty_maps.png"),
        images=images,
        seed=args.seed,
        round_index=args.round,
        methods=methods,
        device=args.device,
    )
    print(f"uncertainty maps: {path}")


def _info(args: argparse.Namespace) -> None:
    import numpy
    import segmentation_models_pytorch
    import torch
    import torchvision

    import uaal_ext
    from uaal_ext.acquisition import method_names
    from uaal_ext.uncertainty import uncertainty_source_names

    from .data import dataset_names
    from .runtime import keep_freed_memory

    build = uaal_ext.build_info()
    rows = [
        ("uaal_ext", f"{uaal_ext.__version__} ({os.path.dirname(uaal_ext.__file__)})"),
        ("kernels", ", ".join(name for name in ("cpu", "cuda") if build.get(name))),
        *((key, value) for key, value in build.items() if key not in ("version", "cpu", "cuda")),
        ("python", platform.python_version()),
        (
            "torch",
            f"{torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}, "
            f"devices: {torch.cuda.device_count()})",
        ),
        ("torchvision", torchvision.__version__),
        ("segmentation_models_pytorch", segmentation_models_pytorch.__version__),
        ("numpy", numpy.__version__),
        (
            "threads",
            f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op ({os.cpu_count()} CPUs)",
        ),
        ("freed memory kept", "yes (glibc malloc tuned)" if keep_freed_memory() else "no (not glibc)"),
        ("processes", _processes()),
        ("acquisition methods", ", ".join(method_names())),
        ("uncertainty sources", ", ".join(uncertainty_source_names())),
        ("datasets", ", ".join(dataset_names())),
    ]
    width = max(len(name) for name, _ in rows)
    from uaal_ext import distributed

    for name, value in rows if distributed.is_main_process() else ():  # under torchrun: once
        print(f"{name:<{width}}  {value}")


def _processes() -> str:
    """World size, backend and devices as this launch would use them: ``uaal info`` under torchrun
    joins the group (gloo, or NCCL with ``UAAL_DEVICE=cuda``) like ``uaal run`` does."""
    import torch

    from uaal_ext import distributed

    if not distributed.launched():
        return "1 (not launched by torchrun: `torchrun --nproc_per_node N -m uaal_ext run ...` runs N)"
    device = distributed.init_from_environment(os.environ.get("UAAL_DEVICE", "cpu"))
    devices = distributed.gather_objects(str(device))
    where = f"devices {', '.join(devices)}" if device.type == "cuda" else "CPU"
    described = distributed.describe()
    line = f"{described['world_size']} ({described['backend']}, {where}; this is rank {described['rank']})"
    if device.type == "cuda":
        line += f", {torch.cuda.get_device_name(device)}"
    return line


# ---------------------------------------------------------------------------------------------------
# Arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uaal",
        description="Uncertainty-aware active learning for semantic segmentation: run experiments, "
        "report them, draw their uncertainty maps.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every experiment resumes where it stopped when its command is run again with the same --out.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, summary: str, description: str = "", progress: bool = True):
        sub = commands.add_parser(name, help=summary, description=description or None)
        sub.set_defaults(handler=handler)
        if progress:
            sub.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
        return sub

    def config_options(sub: argparse.ArgumentParser, out_help: str) -> None:
        sub.add_argument("--config", default=None, help="YAML config file (default: every key at its default)")
        sub.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, value in YAML syntax (e.g. --set seeds=[0,1,2] --set eta=0.005); repeatable",
        )
        sub.add_argument("--out", required=True, help=out_help)

    demo = command(
        "demo", _demo, "the complete comparison on built-in synthetic data (about 14 min on 2 CPU cores)",
        "Random, Entropy and Noise Stability selection, each with standard and UAAL (kernel-noise) training, at "
        "10% and 20% of a synthetic pool, 3 seeds, the small DeepLabv3+; then the report with paired differences "
        "over seeds, the mIoU-vs-budget figure and uncertainty maps.",
    )  # fmt: skip
    demo.add_argument("--out", default=DEMO_OUT, help=f"output folder (default {DEMO_OUT}; rerun to resume)")
    demo.add_argument(
        "--quick", action="store_true", help="a smoke run of about 2 minutes: 1 seed, smaller pool, few steps"
    )
    demo.add_argument("--device", default="cpu", help="torch device to train on (default cpu)")

    run = command(
        "run", _run, "one experiment from a YAML config",
        "One experiment from a YAML config file (keys: those of uaal_ext.experiment.al.ExperimentConfig; see "
        "configs/*.yaml), overridden by --set.",
    )  # fmt: skip
    config_options(run, "output folder (state, checkpoints, report); rerun to resume")
    run.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run part I of N of the grid (its (seed, mode) groups), each part in its own --out; "
        "`uaal report` of the N folders equals the report of one run",
    )

    sweep = command(
        "sweep", _sweep, "one experiment per grid point (ablations such as the exponent or eta)",
        "Runs the config once per point of the grid, in OUT/key=value folders, then reports them together "
        "(each point is a column).",
    )  # fmt: skip
    sweep.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                       help="a config key and its values, e.g. exponent=1,2,3,5 or eta=0.001,0.01; repeatable "
                       "(product)")  # fmt: skip
    config_options(sweep, "output folder of the sweep (one folder per grid point inside)")

    report = command(
        "report", _report, "Markdown/CSV tables (mean +- std over seeds, best in bold) and mIoU-vs-budget plots",
        "Reads the experiments in the given folders (or below them) and writes report.md, summary.csv, runs.csv "
        "and one mIoU-vs-budget PNG per dataset and model.", progress=False,
    )  # fmt: skip
    report.add_argument("dirs", nargs="+", metavar="DIR", help="experiment folders, or folders holding them")
    report.add_argument("--out", default=None, help="where to write the report (default FIRST_DIR/report)")

    maps = command(
        "maps", _maps, "uncertainty maps of validation images, standard vs UAAL training, per method (PNG)",
        "Draws, for chosen validation images, the uncertainty map of each selection method under the models "
        "trained with standard and with UAAL training.", progress=False,
    )  # fmt: skip
    maps.add_argument("dir", metavar="DIR", help="a finished (or partly run) experiment folder")
    maps.add_argument("--out", default=None, help="folder of uncertainty_maps.png (default DIR/report)")
    maps.add_argument("--images", default="0,1", help="validation image indices, comma-separated (default 0,1)")
    maps.add_argument("--seed", type=int, default=None, help="which seed's models (default the first)")
    maps.add_argument("--round", type=int, default=-1, help="which round's models (default the last trained)")
    maps.add_argument("--methods", default=None, help="comma-separated methods (default all that have a map)")
    maps.add_argument("--device", default="cpu", help="torch device (default cpu)")

    command("info", _info, "what was built (CPU / CUDA kernels, archs), versions, threads, registries", progress=False)
    return parser


#: Commands that read finished folders and draw from a few images: under torchrun they run on rank 0
#: only (``run``, ``sweep`` and ``demo`` spread their experiments over every rank).
_SINGLE_PROCESS_COMMANDS = ("report", "maps")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .al import StateError  # after parsing: --help answers without importing torch
    from .files import FolderInUseError
    from .runtime import keep_freed_memory

    keep_freed_memory()  # the command runs whole trainings: reuse freed activation memory

    if args.command in _SINGLE_PROCESS_COMMANDS and os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 alone writes the report and the maps: a few images' work
    try:
        args.handler(args)
        from uaal_ext import distributed

        distributed.shutdown()  # under torchrun: every rank done, then the group closed (not on errors)
    except (ValueError, StateError, FileNotFoundError, FloatingPointError, FolderInUseError) as error:
        if os.environ.get("UAAL_TRACEBACK"):  # for debugging the library itself
            raise
        print(f"uaal {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nuaal {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
