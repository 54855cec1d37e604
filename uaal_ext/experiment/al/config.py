"""The configuration of an active-learning experiment: a dataclass with a commented default for
every key, read from YAML files and ``key=value`` overrides (``uaal run --config F --set k=v``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..._validation import is_int, is_number
from ...acquisition import REDUCTIONS, method_names
from ...schedules import SCHEDULES
from ...uncertainty import uncertainty_source_names
from ..data import dataset_names, dataset_spec
from ..models import MODELS, encoder_weight_names
from ..training import RUNTIME_FIELDS, TrainConfig

__all__ = ["ExperimentConfig", "AL_MODES", "RETRAIN", "RUNTIME_KEYS", "load_config", "apply_overrides", "parse_value"]

RETRAIN = ("scratch", "finetune")
#: The training modes an experiment compares, as (how the selector trains, how the evaluated model --
#: the learner -- trains). The selector is the model whose uncertainty picks the next round's images.
#: "uaal_select" isolates what UAAL training does for selection: a UAAL-trained model selects, a
#: standard-trained one learns from what it selected and is evaluated.
AL_MODES = {"standard": ("standard", "standard"), "uaal": ("uaal", "uaal"), "uaal_select": ("uaal", "standard")}
#: Config keys that say where and how fast an experiment runs, not what it computes: a resumed run
#: may change them.
RUNTIME_KEYS = (*RUNTIME_FIELDS, "eval_batch_size")


@dataclass
class ExperimentConfig:
    # --- data
    dataset: str = "synthetic"  # a registered dataset: "synthetic" | "cityscapes" | "ade20k" | yours
    root: str | None = None  # folder of a dataset read from files (unused for synthetic)
    pool_size: int | None = 400  # unlabeled pool: the first N training images (None: all)
    val_size: int | None = 100  # validation images: the first N (None: all)
    image_size: tuple[int, int] = (64, 128)  # synthetic: rendered (H, W); every dataset: training crop
    scale_range: tuple[float, float] = (0.75, 1.5)  # random rescale of training images
    data_seed: int = 0  # synthetic: which scenes are generated
    dataset_options: dict = field(
        default_factory=dict
    )  # the dataset's own, e.g. {frames_per_scene: 8, rare_scale: 0.3}
    # --- model
    model: str = "small"  # one of uaal_ext.experiment.models.MODELS
    dropout: float = 0.1  # rate of the dropout before the classifier (MC-Dropout samples it)
    encoder_weights: str | None = None  # "imagenet": pretrained encoder as smp/timm load it (None: random init)
    weights: str | None = None  # local weights file of the whole model to start from (overrides encoder_weights)
    # --- active learning
    methods: tuple[str, ...] = ("random", "entropy", "mc_entropy", "noise_stability")  # registered acquisition methods
    modes: tuple[str, ...] = ("standard", "uaal")  # training modes compared: "standard" | "uaal" | "uaal_select"
    initial_fraction: float = 0.05  # random labeled share of the pool before round 1
    budgets: tuple[float, ...] = (0.10, 0.20)  # labeled share after rounds 1, 2, ... ([]: train round 0 only)
    seeds: tuple[int, ...] = (0, 1)  # one full repetition per seed (mean +- std over them)
    retrain: str = "scratch"  # each round: "scratch" (fresh init) | "finetune" (previous weights)
    reduction: str = "mean"  # per-image aggregation of pixel scores
    acquisition_samples: int | None = None  # T of MC-Dropout / K of Noise Stability when scoring (None: 10 / 5)
    quality_sources: tuple[str, ...] = ("entropy",)  # uncertainty maps judged as error detectors at each evaluation
    # --- training (see uaal_ext.experiment.training.TrainConfig)
    epochs: int = 20  # epochs per round (ignored when iterations is set)
    iterations: int | None = None  # optimizer steps per round, whatever the labeled-set size
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    uncertainty: str = "kernel_noise"  # uaal mode: "kernel_noise" | "entropy" | "mc_dropout"
    exponent: float = 2.0  # uaal mode: w = 1 + alpha(t) * u ** exponent
    alpha: float = 1.0  # uaal mode: peak strength
    schedule: str = "constant"  # uaal mode: one of uaal_ext.SCHEDULES
    normalize: str = "max"  # uaal mode: u = U / its per-image "max" | batch "mean" | "scale" (eta for kernel noise)
    s_max: float | None = None  # uaal mode: cap on u ** exponent (None: no cap)
    normalize_by_weight: bool = True  # uaal mode: the mean divides by sum(w), so weighting adds no step size
    eta: float = 0.01  # kernel-noise size (training and Noise Stability scoring)
    num_samples: int = 5  # uaal mode: K kernel-noise / T MC-Dropout passes per step
    amp: bool = True  # float16 autocast on CUDA
    channels_last: bool = True  # channels-last training (faster convs on CPU and GPU)
    sync_batchnorm: bool = True  # under torchrun on GPUs: batch norm over the global batch (SyncBatchNorm)
    num_workers: int = 0  # DataLoader workers
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    eval_batch_size: int = 16  # images per batch when scoring the pool and evaluating

    def __post_init__(self) -> None:
        # YAML and --set give lists; keep tuples so configs compare and hash alike.
        for key in ("image_size", "scale_range", "methods", "modes", "budgets", "seeds", "quality_sources"):
            value = getattr(self, key)
            if isinstance(value, list):
                setattr(self, key, tuple(value))
        self.validate()

    def validate(self) -> ExperimentConfig:
        """Raises ValueError naming the first bad key and what it allows; returns self."""

        def fail(key: str, allowed: str) -> None:
            raise ValueError(f"config key {key!r} must be {allowed}, got {getattr(self, key)!r}")

        for key, allowed in (
            ("dataset", dataset_names()),
            ("model", MODELS),
            ("retrain", RETRAIN),
            ("reduction", REDUCTIONS),
            ("uncertainty", uncertainty_source_names()),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, key) not in allowed:
                fail(key, f"one of {allowed}")
        for key, allowed in (("methods", method_names()), ("modes", tuple(AL_MODES))):
            value = getattr(self, key)
            if (
                not isinstance(value, tuple)
                or not value
                or any(v not in allowed for v in value)
                or len(set(value)) != len(value)
            ):
                fail(key, f"a non-empty list of distinct values from {allowed}")
        spec = dataset_spec(self.dataset)
        generated = spec.generated
        if not isinstance(self.dataset_options, dict) or set(self.dataset_options) - set(spec.options):
            fail("dataset_options", f"a mapping of the options {self.dataset} takes, {list(spec.options)}")
        if not generated and not isinstance(self.root, str):
            fail("root", f"the folder of the {self.dataset} dataset (a path string)")
        for key in ("pool_size", "val_size"):
            value = getattr(self, key)
            if value is not None and (not is_int(value) or value < 1):
                fail(key, "an int >= 1 or null (the whole split)")
        if generated and (self.pool_size is None or self.val_size is None):
            fail(
                "pool_size" if self.pool_size is None else "val_size",
                f"an int >= 1 for generated data ({self.dataset})",
            )
        if not (
            isinstance(self.image_size, tuple)
            and len(self.image_size) == 2
            and all(is_int(v) and v >= 16 and v % 16 == 0 for v in self.image_size)
        ):
            fail("image_size", "[H, W], both multiples of 16")
        if not (
            isinstance(self.scale_range, tuple)
            and len(self.scale_range) == 2
            and all(is_number(v) for v in self.scale_range)
            and 0 < self.scale_range[0] <= self.scale_range[1]
        ):
            fail("scale_range", "[low, high] with 0 < low <= high")
        if not is_int(self.data_seed) or self.data_seed < 0:
            fail("data_seed", "an int >= 0")
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            fail("dropout", "a number in [0, 1)")
        if self.encoder_weights is not None and self.encoder_weights not in encoder_weight_names(self.model):
            fail("encoder_weights", f"null (random init) or one of {encoder_weight_names(self.model)} for {self.model}")
        if self.weights is not None and not isinstance(self.weights, str):
            fail("weights", "a file path or null")
        if not is_number(self.initial_fraction) or not 0 < self.initial_fraction < 1:
            fail("initial_fraction", "a number in (0, 1)")
        fractions = (self.initial_fraction,) + (self.budgets if isinstance(self.budgets, tuple) else ())
        if not (
            isinstance(self.budgets, tuple)
            and all(is_number(b) and 0 < b <= 1 for b in self.budgets)
            and all(a < b for a, b in zip(fractions, fractions[1:]))
        ):
            fail("budgets", "an increasing list of fractions in (initial_fraction, 1] ([]: round 0 only)")
        sources = uncertainty_source_names()
        if not isinstance(self.quality_sources, tuple) or any(s not in sources for s in self.quality_sources):
            fail("quality_sources", f"a list of values from {sources}")
        if not (
            isinstance(self.seeds, tuple)
            and self.seeds
            and all(is_int(s) and 0 <= s < 2**31 for s in self.seeds)
            and len(set(self.seeds)) == len(self.seeds)
        ):
            fail("seeds", "a non-empty list of distinct ints in [0, 2**31)")
        if self.acquisition_samples is not None and (
            not is_int(self.acquisition_samples) or self.acquisition_samples < 1
        ):
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
        # Every TrainConfig field the experiment config has, under the same name; the per-round ones here.
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(self, f.name)}
        ignore_index = dataset_spec(self.dataset).ignore_index
        return TrainConfig(**{**shared, "epochs": epochs, "seed": seed, "ignore_index": ignore_index})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (tuples as lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """From a mapping of config keys; an unknown key raises ValueError listing the known ones."""
        if not isinstance(values, dict):
            raise ValueError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; the keys are {known}")
        return cls(**values)


def parse_value(text: str) -> Any:
    """A value given on the command line, read as YAML: ``2``, ``0.5``, ``[0, 1]``, ``null``; "" is None."""
    import yaml  # only the config parsing needs it

    return yaml.safe_load(text) if text.strip() else None


def apply_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``values`` updated with ``key=value`` strings (values parsed as YAML: ``2``, ``[0, 1]``, ``null``)."""
    values = dict(values)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"an override must look like key=value, got {item!r}")
        values[key.strip()] = parse_value(text)
    return values


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """The config of a YAML file (missing keys keep their defaults) with ``key=value`` overrides applied."""
    import yaml

    values: dict[str, Any] = {}
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
