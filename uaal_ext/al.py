"""Active-learning experiments: train, score the pool, select, retrain, evaluate (SPEC 2, issue 6).

One experiment is a grid of runs, ``seeds x training modes x selection methods``, and reads top to
bottom in :func:`run_experiment`::

    config = ExperimentConfig(methods=("random", "entropy"), modes=("standard", "uaal"), seeds=(0, 1))
    state = run_experiment(config, "runs/demo")        # resumes if runs/demo/state.json exists
    rows = state["results"]                            # one row per (seed, mode, method, round)

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

- ``state.json``: the config, the labeled image ids of every round of every run (in the order they
  were picked), the per-round metrics and ``results`` (flat rows for reports). It is rewritten
  atomically after every step (selection, training, evaluation), so a run killed at any moment and
  started again with the same command resumes: a round whose selection was recorded is never
  re-selected (no image is lost or labeled twice), a round being trained resumes from its epoch
  checkpoint. A state file that cannot be read raises :class:`StateError` and is never overwritten;
  a state written with another config raises ValueError naming the keys that differ.
- ``checkpoints/seed=S/MODE/METHOD/round{r}.pt``: the weights after round ``r`` (``round{r}.train.pt``
  holds the epoch checkpoint while that round trains).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ._atomic import atomic_write
from ._checks import is_int, is_number
from .acquisition import METHODS, REDUCTIONS, select_from_pool
from .data import DATASETS, EvalTransform, TrainTransform, dataset_info, make_dataset
from .models import MODELS, build_model
from .schedules import SCHEDULES
from .training import MODES, TrainConfig, evaluate, train
from .uncertainty import UNCERTAINTY_SOURCES

__all__ = [
    "ExperimentConfig",
    "StateError",
    "RETRAIN",
    "STATE_FILE",
    "load_config",
    "apply_overrides",
    "run_experiment",
    "load_state",
    "build_datasets",
    "load_round_model",
    "run_key",
]

RETRAIN = ("scratch", "finetune")
STATE_FILE = "state.json"
_STATE_FORMAT = 1
# Config fields that say where and how fast an experiment runs, not what it computes: a resumed run
# may change them.
_RESUMABLE_WITH_CHANGES = ("device", "num_workers", "amp", "channels_last", "eval_batch_size")


@dataclass
class ExperimentConfig:
    # --- data
    dataset: str = "synthetic"               # "synthetic" | "cityscapes" | "ade20k"
    root: Optional[str] = None               # folder of a real dataset (unused for synthetic)
    pool_size: Optional[int] = 400           # unlabeled pool: the first N training images (None: all)
    val_size: Optional[int] = 100            # validation images: the first N (None: all)
    image_size: Tuple[int, int] = (64, 128)  # synthetic: rendered (H, W); every dataset: training crop
    scale_range: Tuple[float, float] = (0.75, 1.5)  # random rescale of training images
    data_seed: int = 0                       # synthetic: which scenes are generated
    # --- model
    model: str = "small"                     # one of uaal_ext.models.MODELS
    dropout: float = 0.1                     # rate of the dropout before the classifier (MC-Dropout samples it)
    weights: Optional[str] = None            # local weights file to start every model from (None: random init)
    # --- active learning
    methods: Tuple[str, ...] = ("random", "entropy", "mc_entropy", "noise_stability")  # acquisition.METHODS
    modes: Tuple[str, ...] = ("standard", "uaal")  # training modes compared
    initial_fraction: float = 0.05           # random labeled share of the pool before round 1
    budgets: Tuple[float, ...] = (0.10, 0.20)  # labeled share of the pool after rounds 1, 2, ...
    seeds: Tuple[int, ...] = (0, 1)          # one full repetition per seed (mean +- std over them)
    retrain: str = "scratch"                 # each round: "scratch" (fresh init) | "finetune" (previous weights)
    reduction: str = "mean"                  # per-image aggregation of pixel scores
    acquisition_samples: Optional[int] = None  # T of MC-Dropout / K of Noise Stability when scoring (None: 10 / 5)
    # --- training (see uaal_ext.training.TrainConfig)
    epochs: int = 20                         # epochs per round (ignored when iterations is set)
    iterations: Optional[int] = None         # optimizer steps per round, whatever the labeled-set size
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    uncertainty: str = "kernel_noise"        # uaal mode: "kernel_noise" | "entropy" | "mc_dropout"
    exponent: float = 2.0                    # uaal mode: w = 1 + alpha(t) * u ** exponent
    alpha: float = 1.0                       # uaal mode: peak strength
    schedule: str = "constant"               # uaal mode: one of uaal_ext.SCHEDULES
    normalize: str = "scale"                 # uaal mode: u = U / eta (kernel noise) | U / its batch "mean" | per-image "max"
    s_max: Optional[float] = None            # uaal mode: cap on u ** exponent (None: no cap)
    eta: float = 0.01                        # kernel-noise size (training and Noise Stability scoring)
    num_samples: int = 5                     # uaal mode: K kernel-noise / T MC-Dropout passes per step
    amp: bool = True                         # float16 autocast on CUDA
    channels_last: bool = True               # channels-last training (faster convs on CPU and GPU)
    num_workers: int = 0                     # DataLoader workers
    device: str = "cpu"                      # "cpu", "cuda", "cuda:1", ...
    eval_batch_size: int = 16                # images per batch when scoring the pool and evaluating

    def __post_init__(self) -> None:
        # YAML and --set give lists; keep tuples so configs compare and hash alike.
        for key in ("image_size", "scale_range", "methods", "modes", "budgets", "seeds"):
            value = getattr(self, key)
            if isinstance(value, list):
                setattr(self, key, tuple(value))
        self.validate()

    def validate(self) -> "ExperimentConfig":
        """Raises ValueError naming the first bad key and what it allows; returns self."""

        def fail(key: str, allowed: str) -> None:
            raise ValueError(f"config key {key!r} must be {allowed}, got {getattr(self, key)!r}")

        for key, allowed in (("dataset", DATASETS), ("model", MODELS), ("retrain", RETRAIN),
                             ("reduction", REDUCTIONS), ("uncertainty", UNCERTAINTY_SOURCES),
                             ("schedule", SCHEDULES)):
            if getattr(self, key) not in allowed:
                fail(key, f"one of {allowed}")
        for key, allowed in (("methods", METHODS), ("modes", MODES)):
            value = getattr(self, key)
            if not isinstance(value, tuple) or not value or any(v not in allowed for v in value) \
                    or len(set(value)) != len(value):
                fail(key, f"a non-empty list of distinct values from {allowed}")
        if self.dataset != "synthetic" and not isinstance(self.root, str):
            fail("root", f"the folder of the {self.dataset} dataset (a path string)")
        for key in ("pool_size", "val_size"):
            value = getattr(self, key)
            if value is not None and (not is_int(value) or value < 1):
                fail(key, "an int >= 1 or null (the whole split)")
        if self.dataset == "synthetic" and (self.pool_size is None or self.val_size is None):
            fail("pool_size" if self.pool_size is None else "val_size", "an int >= 1 for synthetic data")
        if not (isinstance(self.image_size, tuple) and len(self.image_size) == 2
                and all(is_int(v) and v >= 16 and v % 16 == 0 for v in self.image_size)):
            fail("image_size", "[H, W], both multiples of 16")
        if not (isinstance(self.scale_range, tuple) and len(self.scale_range) == 2
                and all(is_number(v) for v in self.scale_range) and 0 < self.scale_range[0] <= self.scale_range[1]):
            fail("scale_range", "[low, high] with 0 < low <= high")
        if not is_int(self.data_seed) or self.data_seed < 0:
            fail("data_seed", "an int >= 0")
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            fail("dropout", "a number in [0, 1)")
        if self.weights is not None and not isinstance(self.weights, str):
            fail("weights", "a file path or null")
        if not is_number(self.initial_fraction) or not 0 < self.initial_fraction < 1:
            fail("initial_fraction", "a number in (0, 1)")
        fractions = (self.initial_fraction,) + (self.budgets if isinstance(self.budgets, tuple) else ())
        if not (isinstance(self.budgets, tuple) and self.budgets and all(is_number(b) and 0 < b <= 1 for b in self.budgets)
                and all(a < b for a, b in zip(fractions, fractions[1:]))):
            fail("budgets", "a non-empty increasing list of fractions in (initial_fraction, 1]")
        if not (isinstance(self.seeds, tuple) and self.seeds and all(is_int(s) and 0 <= s < 2**31 for s in self.seeds)
                and len(set(self.seeds)) == len(self.seeds)):
            fail("seeds", "a non-empty list of distinct ints in [0, 2**31)")
        if self.acquisition_samples is not None and (not is_int(self.acquisition_samples) or self.acquisition_samples < 1):
            fail("acquisition_samples", "an int >= 1 or null")
        if self.iterations is not None and (not is_int(self.iterations) or self.iterations < 1):
            fail("iterations", "an int >= 1 or null (then epochs counts)")
        if not is_int(self.eval_batch_size) or self.eval_batch_size < 1:
            fail("eval_batch_size", "an int >= 1")
        try:  # the training fields: TrainConfig names the field that is wrong
            self.train_config(seed=0, epochs=self.epochs)
        except ValueError as error:
            raise ValueError(str(error).replace("TrainConfig.", "config key ")) from None
        return self

    def train_config(self, seed: int, epochs: int) -> TrainConfig:
        """The :class:`TrainConfig` of one round (its ``mode`` is set per run)."""
        return TrainConfig(
            epochs=epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, poly_power=self.poly_power, uncertainty=self.uncertainty,
            exponent=self.exponent, alpha=self.alpha, schedule=self.schedule, normalize=self.normalize,
            s_max=self.s_max, eta=self.eta,
            num_samples=self.num_samples, amp=self.amp, channels_last=self.channels_last,
            num_workers=self.num_workers, seed=seed, device=self.device,
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON/YAML types (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ExperimentConfig":
        """From a mapping of config keys; an unknown key raises ValueError listing the known ones."""
        if not isinstance(values, dict):
            raise ValueError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; the keys are {known}")
        return cls(**values)


class StateError(RuntimeError):
    """An experiment state file that cannot be read, or is not one (it is left as it is)."""


# ---------------------------------------------------------------------------------------------------
# Config files and overrides


def _parse_value(text: str) -> Any:
    import yaml  # only the config parsing needs it

    return yaml.safe_load(text) if text.strip() else None


def apply_overrides(values: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """``values`` updated with ``key=value`` strings (values parsed as YAML: ``2``, ``[0, 1]``, ``null``)."""
    values = dict(values)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"an override must look like key=value, got {item!r}")
        values[key.strip()] = _parse_value(text)
    return values


def load_config(path: Optional[Union[str, os.PathLike]] = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """The config of a YAML file (missing keys keep their defaults) with ``key=value`` overrides applied."""
    import yaml

    values: Dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as file:
                values = yaml.safe_load(file) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {os.fspath(path)!r} does not exist") from None
        except yaml.YAMLError as error:
            raise ValueError(f"config file {os.fspath(path)!r} is not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {os.fspath(path)!r} must hold a mapping of keys to values")
    return ExperimentConfig.from_dict(apply_overrides(values, overrides))


# ---------------------------------------------------------------------------------------------------
# Data


class _IndexedImages(Dataset):
    """``(image, pool index)`` items of a dataset, what :func:`select_from_pool`'s loader yields."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.dataset[index][0], index


class _RenderedOnce(Dataset):
    """A synthetic split whose scenes are rendered once and kept (a few MB per 100 small images),
    seen through its own transform: rounds and methods revisit the same pool many times."""

    def __init__(self, scenes: Dataset, cache: Dict[int, Tuple[torch.Tensor, torch.Tensor]], transform: Callable) -> None:
        self.scenes, self.cache, self.transform = scenes, cache, transform

    def __len__(self) -> int:
        return len(self.scenes)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if index not in self.cache:
            self.cache[index] = self.scenes.raw(index)  # type: ignore[attr-defined]
        return self.transform(*self.cache[index])


def _first(dataset: Dataset, size: Optional[int], key: str) -> Dataset:
    if size is None:
        return dataset
    if size > len(dataset):  # type: ignore[arg-type]
        raise ValueError(f"config key {key!r} is {size} but the split has only {len(dataset)} images")
    return Subset(dataset, range(size))


@dataclass
class Datasets:
    pool_train: Dataset  # the pool with training augmentation (labeled subsets are taken from it)
    pool_eval: Dataset   # the same images without augmentation (scored by the acquisition methods)
    val: Dataset         # the validation split
    num_classes: int
    ignore_index: int
    class_names: Tuple[str, ...]


def build_datasets(config: ExperimentConfig) -> Datasets:
    """The pool (training and scoring views) and validation split of ``config``."""
    num_classes, ignore_index, class_names = dataset_info(config.dataset)
    train_transform = TrainTransform(crop_size=config.image_size, scale_range=config.scale_range,
                                     ignore_index=ignore_index)
    # Real images come in any size; the model needs sides divisible by its output stride (16).
    eval_transform = EvalTransform(size_divisor=1 if config.dataset == "synthetic" else 16, ignore_index=ignore_index)
    if config.dataset == "synthetic":
        options = dict(seed=config.data_seed, image_size=config.image_size)
        pool = make_dataset("synthetic", "pool", size=config.pool_size, **options)
        val = make_dataset("synthetic", "val", size=config.val_size, **options)
        pool_cache: Dict[int, Any] = {}
        pool_train = _RenderedOnce(pool, pool_cache, train_transform)
        pool_eval = _RenderedOnce(pool, pool_cache, eval_transform)
        val = _RenderedOnce(val, {}, eval_transform)
    else:
        pool_train = _first(make_dataset(config.dataset, "pool", root=config.root, transform=train_transform),
                            config.pool_size, "pool_size")
        pool_eval = _first(make_dataset(config.dataset, "pool", root=config.root, transform=eval_transform),
                           config.pool_size, "pool_size")
        val = _first(make_dataset(config.dataset, "val", root=config.root, transform=eval_transform),
                     config.val_size, "val_size")
    return Datasets(pool_train, pool_eval, val, num_classes, ignore_index, tuple(class_names))


# ---------------------------------------------------------------------------------------------------
# Seeds, names, sizes


def _derive_seed(seed: int, *parts: Union[int, str]) -> int:
    """A seed in [0, 2**63) for one purpose of one experiment seed (``parts`` name the purpose)."""
    words = [seed] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def run_key(seed: int, mode: str, method: Optional[str]) -> str:
    """The name of one run in the state (``method=None``: the shared round 0 of a seed and mode)."""
    return f"seed={seed}/{mode}/{method or 'initial'}"


def budget_sizes(config: ExperimentConfig, pool_size: int) -> List[int]:
    """Labeled images after round 0, 1, ...: ``round(fraction * pool_size)``, strictly increasing."""
    sizes = [max(1, round(f * pool_size)) for f in (config.initial_fraction, *config.budgets)]
    if any(a >= b for a, b in zip(sizes, sizes[1:])) or sizes[-1] > pool_size:
        raise ValueError(
            f"a pool of {pool_size} images gives the labeled-set sizes {sizes} for initial_fraction "
            f"{config.initial_fraction} and budgets {list(config.budgets)}: they must increase strictly; "
            f"use a larger pool_size or budgets further apart"
        )
    return sizes


def _epochs_for(config: ExperimentConfig, num_labeled: int) -> int:
    if config.iterations is None:
        return config.epochs
    steps_per_epoch = math.ceil(num_labeled / config.batch_size)
    return max(1, math.ceil(config.iterations / steps_per_epoch))


# ---------------------------------------------------------------------------------------------------
# State file


def _write_state(out_dir: str, state: Dict[str, Any]) -> None:
    text = json.dumps(state, indent=1, allow_nan=True).encode()
    atomic_write(os.path.join(out_dir, STATE_FILE), lambda file: file.write(text))


_STATE_KEYS = ("format", "config", "pool_size", "budget_sizes", "initial", "runs", "results", "finished")


def load_state(out_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The state of the experiment in ``out_dir``; StateError if it is missing, unreadable or not one."""
    path = os.path.join(os.fspath(out_dir), STATE_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            state = json.load(file)
    except FileNotFoundError:
        raise StateError(f"{path!r} does not exist: {os.fspath(out_dir)!r} holds no experiment") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateError(
            f"experiment state {path!r} is corrupt or unreadable ({type(error).__name__}: {error}); it was "
            f"left as it is: move it away (or choose another --out) to start over"
        ) from None
    missing = [key for key in _STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing or state["format"] != _STATE_FORMAT:
        raise StateError(
            f"{path!r} is not a uaal_ext experiment state of format {_STATE_FORMAT} (missing {missing}); "
            f"it was left as it is: move it away (or choose another --out) to start over"
        )
    return state


def _check_same_config(state: Dict[str, Any], config: ExperimentConfig, out_dir: str) -> None:
    saved, current = state["config"], config.to_dict()
    changed = sorted(key for key in saved.keys() | current.keys()
                     if key not in _RESUMABLE_WITH_CHANGES and saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
        raise ValueError(
            f"{os.path.join(out_dir, STATE_FILE)!r} holds an experiment with another config ({details}); "
            f"rerun with the same config to resume, or choose another output folder"
        )


# ---------------------------------------------------------------------------------------------------
# Models of rounds


def _new_model(config: ExperimentConfig, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(_derive_seed(seed, "init"))  # the same initial weights for every run of a seed
    return build_model(config.model, num_classes, dropout=config.dropout, weights=config.weights)


def _save_weights(model: nn.Module, path: str) -> None:
    weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    atomic_write(path, lambda file: torch.save(weights, file))


def _load_weights(model: nn.Module, path: str) -> nn.Module:
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(weights)
    except FileNotFoundError:
        raise StateError(f"the weights file {path!r} that the state refers to is missing") from None
    except Exception as error:  # noqa: BLE001  (torch.load's failures have no common type)
        raise StateError(f"the weights file {path!r} is corrupt or does not fit the model: {error}") from None
    return model


def load_round_model(
    out_dir: Union[str, os.PathLike],
    seed: int,
    mode: str,
    method: Optional[str],
    round_index: int = -1,
    *,
    state: Optional[Dict[str, Any]] = None,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """The model trained in round ``round_index`` (default: the last trained) of one run, in eval mode.

    ``method=None`` (or round 0) is the shared initial model of the seed and mode.
    """
    out_dir = os.fspath(out_dir)
    state = load_state(out_dir) if state is None else state
    config = ExperimentConfig.from_dict(state["config"])
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < -1:
        raise ValueError(f"round_index must be -1 (the last trained round) or a round >= 0, got {round_index!r}")
    if method is not None and method not in config.methods:
        raise ValueError(f"the experiment in {out_dir!r} has no method {method!r}; it ran {list(config.methods)}")
    key = run_key(seed, mode, None if round_index == 0 else method)
    if key not in state["runs"]:
        raise ValueError(f"the experiment in {out_dir!r} has no run {key!r}; it has {sorted(state['runs'])}")
    trained = [r for r in state["runs"][key]["rounds"] if r["status"] in ("trained", "done")]
    if round_index >= 0:
        trained = [r for r in trained if r["round"] == round_index]
    if not trained:
        raise ValueError(f"run {key!r} of {out_dir!r} has no trained round {round_index}")
    num_classes = dataset_info(config.dataset)[0]
    model = _load_weights(_new_model(config, num_classes, seed), os.path.join(out_dir, trained[-1]["checkpoint"]))
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------
# The experiment


def _result_rows(config: ExperimentConfig, seed: int, mode: str, methods: Sequence[str], entry: Dict[str, Any]) -> List[Dict[str, Any]]:
    metrics = entry["metrics"]
    return [
        {
            "dataset": config.dataset, "model": config.model, "method": method, "mode": mode, "seed": seed,
            "round": entry["round"], "budget": entry["budget"], "num_labeled": entry["num_labeled"],
            "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "mean_class_accuracy": metrics["mean_class_accuracy"],
        }
        for method in methods
    ]


def run_experiment(
    config: ExperimentConfig,
    out_dir: Union[str, os.PathLike],
    *,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Runs (or resumes) the experiment of ``config`` in ``out_dir`` and returns its final state.

    Progress: one bar over all trainings of the experiment, nested bars for each training and
    scoring pass; ``log`` (default ``tqdm.write`` when ``progress``) gets a line per finished round.
    """
    config.validate()
    out_dir = os.fspath(out_dir)
    log = log if log is not None else (tqdm.write if progress else (lambda line: None))
    data = build_datasets(config)
    pool_size = len(data.pool_eval)  # type: ignore[arg-type]
    sizes = budget_sizes(config, pool_size)
    fractions = (config.initial_fraction, *config.budgets)

    if os.path.exists(os.path.join(out_dir, STATE_FILE)):
        state = load_state(out_dir)
        _check_same_config(state, config, out_dir)
        state["config"] = config.to_dict()  # device and the like may change on resume
    else:
        state = {"format": _STATE_FORMAT, "config": config.to_dict(), "pool_size": pool_size,
                 "budget_sizes": sizes, "initial": {}, "runs": {}, "results": [], "finished": False,
                 "wall_time": 0.0}
    if state["pool_size"] != pool_size:
        raise ValueError(f"the state in {out_dir!r} is for a pool of {state['pool_size']} images, this one has {pool_size}")

    save = lambda: _write_state(out_dir, state)  # noqa: E731
    pool_loader = DataLoader(_IndexedImages(data.pool_eval), batch_size=config.eval_batch_size, shuffle=False,
                             num_workers=config.num_workers)
    rounds_per_run = len(config.budgets)
    total = len(config.seeds) * len(config.modes) * (1 + len(config.methods) * rounds_per_run)
    done = sum(1 for run in state["runs"].values() for r in run["rounds"] if r["status"] == "done")
    bar = tqdm(total=total, initial=done, desc="experiment", unit="round", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    wall_before = state.get("wall_time", 0.0)

    def run_round(key: str, seed: int, mode: str, methods: Sequence[str], r: int,
                  choose: Callable[[], Tuple[List[int], List[int], float]], start_from: Optional[str]) -> Dict[str, Any]:
        """Selection (if not recorded), training (resumable), evaluation of round ``r`` of one run."""
        run = state["runs"].setdefault(key, {"seed": seed, "mode": mode, "method": key.rsplit("/", 1)[1], "rounds": []})
        position = r if key.endswith("/initial") else r - 1  # method runs start at round 1
        if len(run["rounds"]) <= position:
            labeled, added, seconds = choose()
            if len(set(labeled)) != len(labeled) or len(labeled) != sizes[r]:
                raise RuntimeError(f"{key} round {r}: the labeled set has {len(labeled)} ids, "
                                   f"{len(set(labeled))} distinct, expected {sizes[r]}")
            run["rounds"].append({"round": r, "budget": fractions[r], "num_labeled": len(labeled),
                                  "labeled": labeled, "added": added, "select_seconds": seconds,
                                  "status": "selected", "checkpoint": None, "metrics": None})
            save()
        entry = run["rounds"][position]
        weights = os.path.join("checkpoints", key, f"round{r}.pt")
        if entry["status"] == "selected":
            model = _new_model(config, data.num_classes, seed)
            if start_from is not None:
                _load_weights(model, os.path.join(out_dir, start_from))
            epochs = _epochs_for(config, len(entry["labeled"]))
            train_config = dataclasses.replace(config.train_config(_derive_seed(seed, "train", r), epochs), mode=mode)
            training_checkpoint = os.path.join(out_dir, "checkpoints", key, f"round{r}.train.pt")
            bar.set_postfix_str(f"{key} round {r}: training on {len(entry['labeled'])} images")
            result = train(model, Subset(data.pool_train, entry["labeled"]), train_config,
                           checkpoint_path=training_checkpoint, progress=progress)
            _save_weights(model, os.path.join(out_dir, weights))
            entry.update(status="trained", checkpoint=weights, epochs=epochs, steps=result.steps,
                         train_seconds=result.wall_time, final_loss=result.losses[-1] if result.losses else None)
            save()
            if os.path.exists(training_checkpoint):
                os.remove(training_checkpoint)  # the weights file has what later rounds need
        if entry["status"] == "trained":
            bar.set_postfix_str(f"{key} round {r}: evaluating")
            model = _load_weights(_new_model(config, data.num_classes, seed), os.path.join(out_dir, weights))
            metrics = evaluate(model, data.val, data.num_classes, ignore_index=data.ignore_index,
                               batch_size=config.eval_batch_size, device=config.device)
            entry.update(status="done", metrics=metrics.as_dict())
            state["results"].extend(_result_rows(config, seed, mode, methods, entry))
            save()
            bar.update()
            log(f"{key} round {r}: {entry['num_labeled']} labeled ({fractions[r]:.0%}), mIoU {metrics.miou:.4f}")
        return entry

    try:
        if not state["runs"]:
            save()  # the folder holds an experiment from the first second on
        for seed in config.seeds:
            if str(seed) not in state["initial"]:
                generator = torch.Generator().manual_seed(_derive_seed(seed, "initial"))
                state["initial"][str(seed)] = sorted(torch.randperm(pool_size, generator=generator)[: sizes[0]].tolist())
                save()
            initial = state["initial"][str(seed)]
            for mode in config.modes:
                first_key = run_key(seed, mode, None)
                run_round(first_key, seed, mode, config.methods, 0, lambda: (list(initial), list(initial), 0.0), None)
                for method in config.methods:
                    key = run_key(seed, mode, method)
                    for r in range(1, rounds_per_run + 1):
                        previous = state["runs"][first_key if r == 1 else key]["rounds"][-1 if r == 1 else r - 2]

                        def choose(previous=previous, r=r, method=method) -> Tuple[List[int], List[int], float]:
                            tick = time.perf_counter()
                            model = None
                            if method != "random":
                                model = _load_weights(_new_model(config, data.num_classes, seed),
                                                      os.path.join(out_dir, previous["checkpoint"])).to(config.device)
                            bar.set_postfix_str(f"{key} round {r}: selecting with {method}")
                            picked = select_from_pool(
                                model if model is not None else nn.Identity(), pool_loader, method,
                                sizes[r] - len(previous["labeled"]), exclude=previous["labeled"],
                                reduction=config.reduction, num_samples=config.acquisition_samples,
                                eta=config.eta, seed=_derive_seed(seed, "acquire", r), progress=progress,
                            )
                            return sorted(previous["labeled"] + picked), picked, time.perf_counter() - tick

                        start_from = previous["checkpoint"] if config.retrain == "finetune" else None
                        run_round(key, seed, mode, (method,), r, choose, start_from)
        state["finished"] = True
    finally:
        bar.close()
        state["wall_time"] = wall_before + time.perf_counter() - started
        save()
    return state
