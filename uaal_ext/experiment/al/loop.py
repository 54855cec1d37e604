"""Active-learning experiments: select, train, evaluate, record, round after round.

One experiment is a grid of runs, ``seeds x training modes x selection methods``::

    config = ExperimentConfig(methods=("random", "entropy"), modes=("standard", "uaal"), seeds=(0, 1))
    state = run_experiment(config, "runs/demo")        # resumes if runs/demo/state.json exists
    rows = state.results                               # one row per (seed, mode, method, round)

For every seed, an initial random ``initial_fraction`` of the pool is labeled, the same images for
every method and training mode of that seed. Round 0 trains on it once per training mode (the
model every method of that mode starts from). Each later round ``r`` lets the method pick images
from the unlabeled rest with the model of round ``r - 1`` until ``budgets[r - 1]`` of the pool is
labeled, trains a model on the labeled set (from scratch by default, ``retrain="finetune"`` to
continue from the previous round's weights) and evaluates it on the validation split.

Randomness: a seed gives the initial set, the model initialisation (the same for every round and
run of that seed), the training shuffles and augmentations of each round (the same for both
training modes and all methods), and the acquisition draws of each round (random scores, MC-Dropout
masks, kernel noise). Reruns of the same config give the same labeled sets.

State and files (``out_dir``):

- ``state.json`` (:mod:`.state`): the config, the labeled image ids of every round of every run (in
  the order they were picked), the per-round metrics and ``results`` (flat rows for reports). It is
  rewritten atomically after every step (selection, training, evaluation), so a run killed at any
  moment and started again with the same command resumes: a round whose selection was recorded is
  never re-selected (no image is lost or labeled twice), a round being trained resumes from its
  epoch checkpoint. A state file that cannot be read raises :class:`StateError` and is never
  overwritten; a state written with another config raises ValueError naming the keys that differ.
- ``checkpoints/seed=S/MODE/METHOD/round{r}.pt``: the weights after round ``r`` (``round{r}.train.pt``
  holds the epoch checkpoint while that round trains).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ... import distributed
from ..._validation import changed_keys, check_int, is_int
from ...acquisition import make_method, select_from_pool
from ..data import dataset_spec
from ..files import FolderInUseError, FolderLock
from ..models import build_model, load_weights, save_weights
from ..training import evaluate, train
from .config import AL_MODES, RUNTIME_KEYS, ExperimentConfig
from .datasets import IndexedImages, build_datasets
from .state import (
    INITIAL,
    STATE_FILE,
    ExperimentState,
    RoundState,
    RoundStatus,
    RunState,
    StateError,
    load_state,
    run_key,
)

__all__ = ["run_experiment", "ActiveLearningLoop", "budget_sizes", "derive_seed", "load_round_model"]


def derive_seed(seed: int, *parts: int | str) -> int:
    """A seed in [0, 2**63) for one purpose of one experiment seed (``parts`` name the purpose)."""
    words = [seed] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def budget_sizes(config: ExperimentConfig, pool_size: int) -> list[int]:
    """Labeled images after round 0, 1, ...: ``round(fraction * pool_size)``, strictly increasing."""
    sizes = [max(1, round(f * pool_size)) for f in (config.initial_fraction, *config.budgets)]
    if any(a >= b for a, b in zip(sizes, sizes[1:])) or sizes[-1] > pool_size:
        raise ValueError(
            f"a pool of {pool_size} images gives the labeled-set sizes {sizes} for initial_fraction "
            f"{config.initial_fraction} and budgets {list(config.budgets)}: they must increase strictly; "
            f"use a larger pool_size or budgets further apart"
        )
    return sizes


def epochs_for(config: ExperimentConfig, num_labeled: int) -> int:
    """Epochs of a round on ``num_labeled`` images: ``config.epochs``, or as many as ``iterations`` take."""
    if config.iterations is None:
        return config.epochs
    steps_per_epoch = math.ceil(num_labeled / config.batch_size)
    return max(1, math.ceil(config.iterations / steps_per_epoch))


def new_model(config: ExperimentConfig, num_classes: int, seed: int) -> nn.Module:
    """The model a round of seed ``seed`` starts from: the same initial weights for every run of a seed."""
    torch.manual_seed(derive_seed(seed, "init"))
    return build_model(
        config.model,
        num_classes,
        dropout=config.dropout,
        weights=config.weights,
        encoder_weights=config.encoder_weights,
    )


def _load_round_weights(model: nn.Module, path: str) -> nn.Module:
    try:
        return load_weights(model, path)
    except (OSError, ValueError) as error:  # FileNotFoundError is an OSError
        raise StateError(f"the weights file that the state refers to cannot be used: {error}") from None


def load_round_model(
    out_dir: str | os.PathLike,
    seed: int,
    mode: str,
    method: str | None,
    round_index: int = -1,
    *,
    state: ExperimentState | None = None,
    device: str | torch.device = "cpu",
    selector: bool = False,
) -> nn.Module:
    """The model trained in round ``round_index`` (default: the last trained) of one run, in eval mode.

    ``method=None`` (or round 0) is the shared initial model of the seed and mode. ``selector``: in
    a mode whose selector and learner differ (``"uaal_select"``), the model that selected rather than
    the one evaluated.
    """
    out_dir = os.fspath(out_dir)
    state = load_state(out_dir) if state is None else state
    config = ExperimentConfig.from_dict(state.config)
    check_int("round_index", round_index, low=-1)
    if method is not None and method not in config.methods:
        raise ValueError(f"the experiment in {out_dir!r} has no method {method!r}; it ran {list(config.methods)}")
    key = run_key(seed, mode, None if round_index == 0 else method)
    if key not in state.runs:
        raise ValueError(f"the experiment in {out_dir!r} has no run {key!r}; it has {sorted(state.runs)}")
    trained = [r for r in state.runs[key].trained_rounds() if round_index < 0 or r.round == round_index]
    if not trained:
        raise ValueError(f"run {key!r} of {out_dir!r} has no trained round {round_index}")
    model = new_model(config, dataset_spec(config.dataset).num_classes, seed)
    model = _load_round_weights(model, os.path.join(out_dir, trained[-1].selector_weights(selector)))
    return model.to(device).eval()


def _result_rows(config: ExperimentConfig, run: RunState, entry: RoundState) -> list[dict[str, Any]]:
    """The report rows of an evaluated round: one per method (round 0 is every method's start)."""
    methods = config.methods if run.method == INITIAL else (run.method,)
    metrics = entry.metrics or {}
    row: dict[str, Any] = {
        "dataset": config.dataset,
        "model": config.model,
        "mode": run.mode,
        "seed": run.seed,
        "round": entry.round,
        "budget": entry.budget,
        "num_labeled": entry.num_labeled,
        "miou": metrics["miou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "mean_class_accuracy": metrics["mean_class_accuracy"],
    }
    for prefix, measured in (("", metrics), ("selector_", entry.selector_metrics or {})):
        for source, quality in measured.get("uncertainty_quality", {}).items():
            row[f"{prefix}{source}_auroc"] = quality["auroc"]
            row[f"{prefix}{source}_aupr"] = quality["aupr"]
            row[f"{prefix}ece"] = quality["ece"]  # the softmax's, whichever source
    if entry.select_images:
        row["select_ms_per_image"] = 1000 * entry.select_seconds / entry.select_images
        row["select_forwards_per_image"] = (entry.select_forwards or 0) / entry.select_images
    return [{"method": method, **row} for method in methods]


class ActiveLearningLoop:
    """The experiment of ``config`` in ``out_dir``: its data, its state (resumed when the folder holds
    one) and the four steps of a round (:meth:`select`, :meth:`train`, :meth:`evaluate`,
    :meth:`record`). :meth:`run` walks every round of every run."""

    def __init__(
        self,
        config: ExperimentConfig,
        out_dir: str,
        *,
        progress: bool,
        log: Callable[[str], None],
        shard: tuple[int, int] | None = None,
    ) -> None:
        config.validate()
        self.config, self.out_dir, self.progress, self.log = config, out_dir, progress, log
        self.shard = shard
        self.groups = shard_groups(config, shard)  # the (seed, mode) groups this folder runs
        self.data = build_datasets(config)
        pool_size = len(self.data.pool_eval)  # type: ignore[arg-type]
        self.sizes = budget_sizes(config, pool_size)
        self.fractions = (config.initial_fraction, *config.budgets)
        self.state = self._resume_or_start(pool_size)
        # This rank's share of the pool's batches (all of them in one process); selections gather.
        self.pool_loader = DataLoader(
            IndexedImages(self.data.pool_eval),
            batch_sampler=distributed.shard_batches(pool_size, config.eval_batch_size),
            num_workers=config.num_workers,
        )
        rounds_per_run = 1 + len(config.methods) * len(config.budgets)
        self.total_rounds = len(self.groups) * rounds_per_run
        self.bar = tqdm(
            total=self.total_rounds,
            initial=self.state.rounds_done(),
            desc="experiment",
            unit="round",
            disable=not progress,
            dynamic_ncols=True,
        )

    def _resume_or_start(self, pool_size: int) -> ExperimentState:
        """The state to go on from; under torchrun every rank reads the same one (else an error)."""
        state = self._read_or_start(pool_size)
        if state.world_size != distributed.world_size():
            raise ValueError(
                f"{os.path.join(self.out_dir, STATE_FILE)!r} was run by {state.world_size} process(es) and this "
                f"launch has {distributed.world_size()}: relaunch with {state.world_size} (torchrun --nproc_per_node) "
                f"to resume it"
            )
        # The config may differ in its device (cuda:0, cuda:1, ...); everything recorded may not.
        recorded = {key: value for key, value in state.to_json().items() if key != "config"}
        fingerprint = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()
        if len(set(distributed.gather_objects(fingerprint))) > 1:
            raise RuntimeError(
                f"the ranks read different states from {self.out_dir!r}: the output folder must be one folder "
                f"that every rank reads (a shared file system)"
            )
        return state

    def _read_or_start(self, pool_size: int) -> ExperimentState:
        path = os.path.join(self.out_dir, STATE_FILE)
        if not os.path.exists(path):
            return ExperimentState(
                config=self.config.to_dict(),
                pool_size=pool_size,
                budget_sizes=self.sizes,
                shard=self.shard,
                world_size=distributed.world_size(),
            )
        state = load_state(self.out_dir)
        if state.shard != self.shard:
            held, asked = (
                f"part {s[0]}/{s[1]} of the grid" if s else "the whole grid" for s in (state.shard, self.shard)
            )
            raise ValueError(f"{path!r} runs {held}, this command asks for {asked}: rerun it as it was started")
        details = changed_keys(
            state.config, self.config.to_dict(), ignore=RUNTIME_KEYS, defaults=ExperimentConfig().to_dict()
        )
        if details:
            raise ValueError(
                f"{path!r} holds an experiment with another config ({details}); "
                f"rerun with the same config to resume, or choose another output folder"
            )
        if state.pool_size != pool_size:
            raise ValueError(
                f"the state in {self.out_dir!r} is for a pool of {state.pool_size} images, this one has {pool_size}"
            )
        state.config = self.config.to_dict()  # device and the like may change on resume
        return state

    # ---- the experiment, top to bottom --------------------------------------------------------------

    def run(self) -> ExperimentState:
        started, wall_before = time.perf_counter(), self.state.wall_time
        try:
            self.save()  # the folder holds an experiment from the first second on
            for seed in self.config.seeds:
                modes = [mode for mode in self.config.modes if (seed, mode) in self.groups]
                if modes:
                    self.initial_set(seed)
                for mode in modes:
                    start = self.step(self.state.run(seed, mode, None), 0, previous=None)
                    for method in self.config.methods if self.config.budgets else ():  # []: round 0 only
                        run, previous = self.state.run(seed, mode, method), start
                        for r in range(1, len(self.config.budgets) + 1):
                            previous = self.step(run, r, previous)
            self.state.finished = True
        finally:
            self.bar.close()
            self.state.wall_time = wall_before + time.perf_counter() - started
            self.save()
        return self.state

    def step(self, run: RunState, r: int, previous: RoundState | None) -> RoundState:
        """Round ``r`` of ``run``, from wherever the state left it: select (unless recorded), train
        (unless trained), evaluate and record (unless done)."""
        entry = run.round(r)
        if entry is None:
            entry = self.select(run, r, previous)
        if entry.status is RoundStatus.SELECTED:
            self.train(run, entry, previous)
        if entry.status is RoundStatus.TRAINED:
            self.evaluate(run, entry)
        return entry

    # ---- the four steps of a round ------------------------------------------------------------------

    def initial_set(self, seed: int) -> list[int]:
        """The seed's random initial labeled set, drawn once and recorded."""
        if str(seed) not in self.state.initial:
            generator = torch.Generator().manual_seed(derive_seed(seed, "initial"))
            pool_size = self.state.pool_size
            self.state.initial[str(seed)] = sorted(
                torch.randperm(pool_size, generator=generator)[: self.sizes[0]].tolist()
            )
            self.save()
        return self.state.initial[str(seed)]

    def select(self, run: RunState, r: int, previous: RoundState | None) -> RoundState:
        """Records round ``r``'s labeled set: the initial set (round 0), else the previous round's plus
        the images the run's method picks with the previous round's model."""
        tick = time.perf_counter()
        cost: dict[str, int] = {}
        if previous is None:
            labeled = list(self.state.initial[str(run.seed)])
            added = list(labeled)
        else:
            method = make_method(
                run.method,
                reduction=self.config.reduction,
                num_samples=self.config.acquisition_samples,
                eta=self.config.eta,
                seed=derive_seed(run.seed, "acquire", r),
            )
            model: nn.Module = nn.Identity()  # a method that runs no pass needs no model
            if method.passes.runs_model:
                model = self._round_model(run.seed, previous, selector=True).to(self.config.device)
            self.bar.set_postfix_str(f"{run.key} round {r}: selecting with {run.method}")
            added = select_from_pool(
                model,
                self.pool_loader,
                method,
                self.sizes[r] - len(previous.labeled),
                exclude=previous.labeled,
                progress=self.progress,
                gather_ranks=distributed.world_size() > 1,
            )
            labeled = sorted(previous.labeled + added)
            scored = self.state.pool_size - len(previous.labeled)  # every unlabeled image (k-center: all)
            cost = {"select_images": scored, "select_forwards": scored * method.forwards_per_image()}
        if len({tuple(picked) for picked in distributed.gather_objects(added)}) > 1:  # cheap, and never expected
            raise RuntimeError(f"{run.key} round {r}: the ranks selected different images")
        if len(set(labeled)) != len(labeled) or len(labeled) != self.sizes[r]:
            raise RuntimeError(
                f"{run.key} round {r}: the labeled set has {len(labeled)} ids, "
                f"{len(set(labeled))} distinct, expected {self.sizes[r]}"
            )
        entry = RoundState(
            round=r,
            budget=self.fractions[r],
            num_labeled=len(labeled),
            labeled=labeled,
            added=added,
            select_seconds=time.perf_counter() - tick,
            **cost,
        )
        run.rounds.append(entry)
        self.save()
        return entry

    def train(self, run: RunState, entry: RoundState, previous: RoundState | None) -> None:
        """Trains the round's models on its labeled set (each resumable from its epoch checkpoint):
        the learner, and the selector too when the mode's selector trains another way."""
        r = entry.round
        selector_mode, learner_mode = AL_MODES[run.mode]
        folder = os.path.join("checkpoints", run.key)
        self.bar.set_postfix_str(f"{run.key} round {r}: training on {entry.num_labeled} images")
        weights, epochs, result = self._train_model(run, entry, previous, learner_mode, folder, "")
        entry.checkpoint, entry.epochs, entry.steps = weights, epochs, result.steps
        entry.train_seconds = result.wall_time
        entry.final_loss = result.losses[-1] if result.losses else None
        if selector_mode != learner_mode:
            self.bar.set_postfix_str(f"{run.key} round {r}: training the selector ({selector_mode})")
            entry.selector_checkpoint, _, result = self._train_model(
                run, entry, previous, selector_mode, folder, ".selector"
            )
            entry.train_seconds += result.wall_time
        entry.status = RoundStatus.TRAINED
        self.save()
        for suffix in ("", ".selector"):  # the weights files have what later rounds need
            training_checkpoint = os.path.join(self.out_dir, folder, f"round{r}{suffix}.train.pt")
            if distributed.is_main_process() and os.path.exists(training_checkpoint):
                os.remove(training_checkpoint)

    def _train_model(
        self, run: RunState, entry: RoundState, previous: RoundState | None, mode: str, folder: str, suffix: str
    ):
        """One model of the round trained in ``mode``; returns its weights file, epochs and TrainResult."""
        config, r = self.config, entry.round
        model = new_model(config, self.data.num_classes, run.seed)
        if config.retrain == "finetune" and previous is not None:
            _load_round_weights(model, os.path.join(self.out_dir, previous.selector_weights(bool(suffix))))
        epochs = epochs_for(config, entry.num_labeled)
        train_config = dataclasses.replace(config.train_config(derive_seed(run.seed, "train", r), epochs), mode=mode)
        result = train(
            model,
            Subset(self.data.pool_train, entry.labeled),
            train_config,
            checkpoint_path=os.path.join(self.out_dir, folder, f"round{r}{suffix}.train.pt"),
            progress=self.progress,
        )
        weights = os.path.join(folder, f"round{r}{suffix}.pt")
        if distributed.is_main_process():  # the others read it after the state's next save
            save_weights(model, os.path.join(self.out_dir, weights))
        return weights, epochs, result

    def evaluate(self, run: RunState, entry: RoundState) -> None:
        r"""Evaluates the round's model (and a separate selector) on the validation split: mIoU and how
        well each of ``quality_sources`` finds the model's errors; then :meth:`record`\ s it."""
        self.bar.set_postfix_str(f"{run.key} round {entry.round}: evaluating")
        entry.metrics = self._evaluate(run, entry, selector=False)
        if entry.selector_checkpoint is not None:
            entry.selector_metrics = self._evaluate(run, entry, selector=True)
        self.record(run, entry)

    def _evaluate(self, run: RunState, entry: RoundState, selector: bool) -> dict[str, Any]:
        config = self.config
        metrics = evaluate(
            self._round_model(run.seed, entry, selector=selector),
            self.data.val,
            self.data.num_classes,
            ignore_index=self.data.ignore_index,
            batch_size=config.eval_batch_size,
            device=config.device,
            quality_sources=config.quality_sources,
            eta=config.eta,
            num_samples=config.num_samples,
            seed=derive_seed(run.seed, "quality", entry.round),
        )
        return metrics.as_dict()

    def record(self, run: RunState, entry: RoundState) -> None:
        """Marks the round done, adds its report rows and saves the state."""
        entry.status = RoundStatus.DONE
        self.state.results.extend(_result_rows(self.config, run, entry))
        self.save()
        self.bar.update()
        self.log(
            f"{run.key} round {entry.round}: {entry.num_labeled} labeled ({entry.budget:.0%}), "
            f"mIoU {entry.metrics['miou']:.4f}"
        )

    # ---- helpers ------------------------------------------------------------------------------------

    def _round_model(self, seed: int, entry: RoundState, selector: bool = False) -> nn.Module:
        model = new_model(self.config, self.data.num_classes, seed)
        return _load_round_weights(model, os.path.join(self.out_dir, entry.selector_weights(selector)))

    def save(self) -> None:
        """Rank 0 writes the state; every rank waits for it (the files it names are then there)."""
        if distributed.is_main_process():
            self.state.save(self.out_dir)
        distributed.barrier()


def shard_groups(config: ExperimentConfig, shard: tuple[int, int] | None) -> list[tuple[int, str]]:
    """The ``(seed, mode)`` groups of part ``i`` of ``n`` of the grid: every ``n``-th, from the
    ``i``-th. A group's runs share its round-0 model and depend on nothing else, so the parts run
    anywhere at once and ``uaal report`` of their folders equals the report of one run."""
    groups = [(seed, mode) for seed in config.seeds for mode in config.modes]
    if shard is None:
        return groups
    if not (
        isinstance(shard, tuple) and len(shard) == 2 and all(is_int(v) for v in shard) and 0 <= shard[0] < shard[1]
    ):
        raise ValueError(f"shard must be (i, n) with integers 0 <= i < n, got {shard!r}")
    return groups[shard[0] :: shard[1]]


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExperimentState:
    """Runs (or resumes) the experiment of ``config`` in ``out_dir`` and returns its final state.

    Progress: one bar over all rounds of the experiment, nested bars for each training and scoring
    pass; ``log`` (default ``tqdm.write`` with progress bars, ``print`` without) gets a line per
    finished round and, on a resume, one saying how much was done already.

    Under ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ...), every process runs this
    with the same arguments: they join one process group (gloo on the CPU, NCCL on GPUs, the GPU
    ``LOCAL_RANK`` each), train each round data-parallel, score the pool and evaluate in shares,
    and make the same selections; rank 0 alone writes the state, weights and checkpoints, and every
    rank waits for each write. The folder must be shared by all ranks; a resume needs the same number
    of processes.

    ``shard=(i, n)`` runs part ``i`` of ``n`` of the grid (:func:`shard_groups`), for ``n`` jobs
    that each write their own folder. The folder is locked while the experiment runs (:class:`uaal_ext.experiment.files.FolderLock`):
    a second process on it raises :class:`uaal_ext.experiment.files.FolderInUseError` naming the
    holder; the lock of a killed run is taken over.
    """
    out_dir = os.fspath(out_dir)
    device = distributed.init_from_environment(config.device)  # joins torchrun's group, if launched by it
    if str(device) != config.device:
        config = dataclasses.replace(config, device=str(device))
    main = distributed.is_main_process()
    if log is None:
        log = tqdm.write if progress else print
    log = log if main else (lambda line: None)  # one voice: rank 0's
    with contextlib.ExitStack() as stack:
        lock = _lock_on_main_rank(stack, out_dir)  # a second job on this folder stops here, naming the holder
        if lock is not None and lock.previous:
            log(f"{out_dir!r}: process {lock.previous.get('pid')} on {lock.previous.get('host')!r} ended without "
                f"releasing the folder; taking it over")  # fmt: skip
        loop = ActiveLearningLoop(config, out_dir, progress=progress and main, log=log, shard=shard)
        if loop.state.runs:
            log(
                f"resuming {out_dir!r}: {loop.state.rounds_done()} of {loop.total_rounds} rounds done "
                f"({loop.state.wall_time:.0f} s so far)"
            )
        return loop.run()


def _lock_on_main_rank(stack: contextlib.ExitStack, out_dir: str) -> FolderLock | None:
    """Rank 0 locks the folder for the whole group (held until ``stack`` closes); every rank raises
    the same FolderInUseError when it cannot."""
    lock, refusal = None, None
    if distributed.is_main_process():
        try:
            lock = stack.enter_context(FolderLock(out_dir))
        except FolderInUseError as error:
            refusal = str(error)
    refusal = distributed.broadcast_object(refusal)
    if refusal is not None:
        raise FolderInUseError(refusal)
    return lock
