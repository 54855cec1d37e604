"""Training and evaluation of a segmentation model, with or without the UAAL loss.

One flat loop, readable top to bottom::

    config = TrainConfig(epochs=20, mode="uaal", uncertainty="kernel_noise", schedule="linear_decrease")
    result = train(model, dataset, config, checkpoint_path="runs/round0.pt")   # resumes if the file exists
    metrics = evaluate(model, val_set, num_classes=19)                         # metrics.miou, ...

Per iteration (:func:`train_step`): a training forward, the per-pixel uncertainty of that batch,
the (weighted) cross-entropy, backward, an SGD step; the learning rate follows a polynomial decay
per iteration and the UAAL strength ``alpha(t)`` follows its schedule per epoch. The dataset yields
``(image float (3, H, W), label int64 (H, W))`` with ``ignore_index`` marking unlabeled pixels; the
model maps ``(N, 3, H, W)`` images to ``(N, C, H, W)`` logits.

Where the uncertainty comes from, by ``TrainConfig.uncertainty`` in ``"uaal"`` mode:

- ``"kernel_noise"``: sigma of K passes with perturbed weights (:class:`uaal_ext.KernelNoise`), scale
  ``eta``. The training forward is the clean pass; the perturbed passes reuse its dropout masks
  (``record_dropout``), so sigma measures the weight perturbation alone at the cost of K forwards.
- ``"entropy"``: the normalised entropy of the training logits, computed by the loss kernel itself
  (``uncertainty=None``): the same numbers as :class:`uaal_ext.EntropyUncertainty` on those logits,
  without a second pass over them.
- ``"mc_dropout"``: the spread of T MC-Dropout passes (:class:`uaal_ext.uncertainty.MCDropoutUncertainty`).

The step asks the source what it needs (``uses_dropout_masks``, ``computed_in_loss``; see
:class:`uaal_ext.uncertainty.UncertaintySource`), so a registered source of your own trains the same way.
No source adds batch-norm updates: ``num_batches_tracked`` grows by one per iteration.

Checkpoints (``checkpoint_path``) are written atomically at the end of every epoch and hold
everything a resumed run needs to finish with the same weights as an uninterrupted one: model,
optimizer, LR scheduler, grad scaler, uncertainty-source counters, every RNG state, the config and
the per-epoch history. An unreadable checkpoint raises :class:`CheckpointError` and is left as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .. import distributed
from .._validation import changed_keys, is_int, is_number
from ..loss import NORMALIZE_MODES, UAALLoss
from ..schedules import SCHEDULES
from ..uncertainty import UncertaintySource, record_dropout, uncertainty_source_class, uncertainty_source_names
from .evaluation import evaluate
from .files import atomic_write

__all__ = [
    "MODES",
    "RUNTIME_FIELDS",
    "VALUES_BEFORE_KEY_EXISTED",
    "TrainConfig",
    "TrainResult",
    "CheckpointError",
    "train",
    "train_step",
    "make_criterion",
    "evaluate",
]

MODES = ("standard", "uaal")

_CHECKPOINT_FORMAT = 1
#: What a config key meant in a checkpoint or experiment state written before the key existed, where
#: that differs from today's default: such a run computed the old behaviour, and resuming or
#: reporting it must say so (the experiment config shares these keys).
VALUES_BEFORE_KEY_EXISTED = {"normalize": "scale", "normalize_by_weight": False}

#: Config fields that say where and how fast a run goes, not what it computes: a run may resume with
#: other values (another device, more workers, AMP toggled, another layout).
RUNTIME_FIELDS = ("device", "num_workers", "amp", "channels_last")


@dataclass
class TrainConfig:
    epochs: int = 20  # passes over the training set
    batch_size: int = 8  # images per iteration (data-parallel: the global batch, split over the ranks)
    lr: float = 0.01  # base learning rate of SGD
    momentum: float = 0.9  # SGD momentum, in [0, 1)
    weight_decay: float = 5e-4  # L2 penalty of SGD
    poly_power: float = 0.9  # lr = base * (1 - iter / max_iter) ** power, per iteration
    mode: str = "standard"  # "standard" (plain cross-entropy) or "uaal" (uncertainty-weighted)
    uncertainty: str = "kernel_noise"  # uaal mode: "kernel_noise" | "entropy" | "mc_dropout"
    exponent: float = 2.0  # uaal mode: E in w = 1 + alpha(t) * u ** E (paper's best: 2)
    alpha: float = 1.0  # uaal mode: peak strength of the weighting
    schedule: str = "constant"  # uaal mode: alpha(t) over training, one of uaal_ext.SCHEDULES
    normalize: str = "max"  # uaal mode: u = U / its per-image "max" | batch "mean" | "scale" (eta, log C, 1)
    s_max: float | None = None  # uaal mode: cap on u ** exponent (None: no cap)
    normalize_by_weight: bool = True  # uaal mode: the mean divides by sum(c_y * w), so weighting adds no step size
    eta: float = 0.01  # kernel noise: relative weight-noise size, also its uncertainty scale
    num_samples: int = 5  # kernel noise: K perturbed passes; mc_dropout: T stochastic passes
    ignore_index: int = 255  # label value of unlabeled pixels
    amp: bool = True  # mixed precision (float16 autocast + GradScaler), CUDA only
    channels_last: bool = True  # model and images in channels-last layout: oneDNN's and cuDNN's faster convs
    sync_batchnorm: bool = True  # data-parallel on GPUs: batch norm over the global batch (nn.SyncBatchNorm)
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # shuffling, dropout, kernel noise, MC masks (not the model init)
    device: str = "cpu"  # where to train: "cpu", "cuda", "cuda:1", ...

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        """Raises ValueError naming the first bad field and what it allows; returns self."""

        def fail(key: str, allowed: str) -> None:
            raise ValueError(f"TrainConfig.{key} must be {allowed}, got {getattr(self, key)!r}")

        for key, allowed in (
            ("mode", MODES),
            ("uncertainty", uncertainty_source_names()),
            ("schedule", SCHEDULES),
            ("normalize", NORMALIZE_MODES),
        ):
            if getattr(self, key) not in allowed:
                fail(key, f"one of {allowed}")
        for key in ("epochs", "batch_size", "num_samples"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                fail(key, "an int >= 1")
        if not is_number(self.lr) or self.lr <= 0:
            fail("lr", "a finite number > 0")
        if not is_number(self.momentum) or not 0 <= self.momentum < 1:
            fail("momentum", "a number in [0, 1)")
        for key in ("weight_decay", "poly_power", "exponent", "alpha"):
            if not is_number(getattr(self, key)) or getattr(self, key) < 0:
                fail(key, "a finite number >= 0")
        if self.s_max is not None and (not is_number(self.s_max) or self.s_max < 0):
            fail("s_max", "a finite number >= 0 or None")
        if not is_number(self.eta) or self.eta <= 0:
            fail("eta", "a finite number > 0 (it divides sigma)")
        if not is_int(self.ignore_index):
            fail("ignore_index", "an int")
        for key in ("amp", "channels_last", "normalize_by_weight", "sync_batchnorm"):
            if not isinstance(getattr(self, key), bool):
                fail(key, "True or False")
        if not is_int(self.num_workers) or self.num_workers < 0:
            fail("num_workers", "an int >= 0")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            fail("seed", "an int in [0, 2**63)")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            fail("device", "a torch device such as 'cpu', 'cuda' or 'cuda:0'")
        return self


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean loss of each epoch (UAAL-weighted in uaal mode)
    alphas: list[float] = field(default_factory=list)  # alpha(t) used in each epoch (0 in standard mode)
    steps: int = 0  # optimizer steps of the whole run, resumed epochs included
    wall_time: float = 0.0  # seconds this call spent training
    start_epoch: int = 0  # first epoch this call ran (> 0 after a resume)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or is not a training checkpoint."""


# The TrainConfig fields UAALLoss takes under the same name.
_LOSS_OPTIONS = ("ignore_index", "alpha", "exponent", "schedule", "normalize", "s_max", "normalize_by_weight")


def make_criterion(config: TrainConfig, *, sync_ranks: bool = False) -> tuple[UAALLoss, UncertaintySource | None]:
    """The loss of ``config`` and the uncertainty source it needs (None: the loss needs none).
    ``sync_ranks``: the loss of a data-parallel step over the global batch (:class:`UAALLoss`)."""
    if config.mode == "standard":
        return UAALLoss(ignore_index=config.ignore_index, alpha=0.0, sync_ranks=sync_ranks), None
    source = uncertainty_source_class(config.uncertainty).for_training(
        eta=config.eta, num_samples=config.num_samples, seed=config.seed
    )
    # A source the loss kernel computes from the logits it reads anyway (the entropy) gets the loss's
    # own default scale (log C); the others bring theirs.
    scale = None if source.computed_in_loss else source.uncertainty_scale
    options = {key: getattr(config, key) for key in _LOSS_OPTIONS}
    return UAALLoss(max_epochs=config.epochs, uncertainty_scale=scale, sync_ranks=sync_ranks, **options), source


def train_step(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    source: UncertaintySource | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
) -> Tensor:
    """One training iteration on ``batch = (images (N, 3, H, W), labels (N, H, W))`` on the model's device.

    Runs the forward (float16 autocast when ``amp``), the uncertainty of the batch from ``source``
    (None, or a source the loss computes itself: the criterion's own default), the loss, backward
    and one optimizer step (through ``scaler`` when given). The model should be in training mode;
    it may be a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper. Returns the detached loss.
    """
    images, labels = batch
    records = source is not None and source.uses_dropout_masks
    # Under DDP the training forward goes through the wrapper (its backward all-reduces the
    # gradients); the source's extra passes need no gradient and run on the module itself.
    network = model.module if isinstance(model, DistributedDataParallel) else model
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        # A source that replays this forward's dropout masks gets them recorded, not drawn again.
        with record_dropout(network, images.device) if records else contextlib.nullcontext() as masks:
            logits = model(images)  # (N, C, H, W)
        uncertainty = None
        if source is not None and not source.computed_in_loss:
            _, uncertainty = source(network, images, clean_logits=logits.detach(), dropout_masks=masks)  # (N, H, W)
        loss = criterion(logits, labels, uncertainty)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()


def train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains ``model`` in place on ``dataset`` as ``config`` says and returns the per-epoch history.

    With ``checkpoint_path``, the state is saved there (atomically) after every epoch, and an
    existing file is resumed from: the run continues after the saved epoch and ends with the same
    weights as an uninterrupted run (a finished checkpoint just loads its weights). The checkpoint
    must come from the same config (up to ``device``, ``num_workers``, ``amp``) and a dataset of the
    same length, else ValueError. Same ``seed`` and model initialisation give the same weights
    (the global torch, ``random`` and numpy generators are seeded with it). The modules' training
    flags are restored on return. A non-finite loss raises FloatingPointError (without AMP).

    Data-parallel: in a ``torch.distributed`` group (``uaal_ext.distributed.init_from_environment``,
    or your own ``init_process_group``), every rank calls ``train`` with the same arguments and
    ``config.device`` its own device. The model is wrapped in ``DistributedDataParallel`` (its
    batch norms made ``SyncBatchNorm`` on GPUs when ``config.sync_batchnorm``; torch's runs on
    GPUs only); each epoch a ``DistributedSampler`` seeded with ``config.seed`` deals the shuffled
    dataset out to the ranks, ``config.batch_size`` / world size images each per step; the loss is
    the global batch's (``UAALLoss(sync_ranks=True)``); kernel noise is the same on every rank.
    Only rank 0 writes the checkpoint, which holds every rank's generator states; every rank
    resumes from it, and the world size must be the one that wrote it.
    """
    config.validate()
    if len(dataset) == 0:
        raise ValueError("train: the dataset is empty")
    data_parallel = distributed.is_distributed()
    ranks, rank = distributed.world_size(), distributed.rank()
    if config.batch_size % ranks:
        raise ValueError(
            f"train: TrainConfig.batch_size ({config.batch_size}) is the global batch and must divide by the "
            f"world size ({ranks}); choose a batch size that is a multiple of {ranks} or launch another number "
            f"of processes"
        )
    device = torch.device(config.device)
    use_amp = config.amp and device.type == "cuda"
    # Rank 0 draws as one process would; the other ranks' dropout and augmentation draw their own.
    _seed_everything(_rank_seed(config.seed, rank))
    if data_parallel and config.sync_batchnorm:
        model = _synchronized_batch_norm(model, device)
    model.to(device)
    # Channels-last convs take oneDNN's faster paths on the CPU (bench_training_step.py --layout; cuDNN likewise
    # prefers it on tensor cores); the parameters keep their identity, only their strides change.
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=layout)

    # Shuffling draws only from this generator (or the sampler's seed), and so do the DataLoader workers'
    # seeds (torch seeds each worker's torch, random and numpy from a base seed it draws here): runs repeat.
    loader_generator = torch.Generator().manual_seed(_rank_seed(config.seed, rank))
    sampler = DistributedSampler(dataset, ranks, rank, shuffle=True, seed=config.seed) if data_parallel else None
    images_per_rank = len(sampler) if sampler is not None else len(dataset)
    batch_size = config.batch_size // ranks
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=loader_generator,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # A last batch of one image breaks batch norm after global pooling (DeepLabv3+'s ASPP):
        # drop it then, and only then (the shuffle hands every image its turn over the epochs).
        drop_last=images_per_rank > batch_size and images_per_rank % batch_size == 1,
    )
    if data_parallel and images_per_rank < 2 and _has_unsynchronised_batch_norm(model):
        raise ValueError(
            f"train: {len(dataset)} images over {ranks} processes leave each rank 1 image per step, and batch "
            f"norm that is not synchronised (SyncBatchNorm runs on GPUs only) needs 2; train on more images or "
            f"with fewer processes"
        )
    steps_per_epoch = len(loader)
    max_iter = config.epochs * steps_per_epoch

    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: (1.0 - it / max_iter) ** config.poly_power,  # it = iterations done
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    criterion, source = make_criterion(config, sync_ranks=data_parallel)
    criterion.to(device)

    result = TrainResult()
    path = os.fspath(checkpoint_path) if checkpoint_path is not None else None
    state = _load_checkpoint(path) if path is not None and os.path.exists(path) else None
    _check_ranks_agree(state, path)
    if state is not None:
        _check_resumable(state, config, len(dataset), path)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(f"checkpoint {path!r} does not fit this model: {error}") from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        if source is not None:
            source.load_state_dict(state["source"])
        _restore_rng_states(state.get("rank_rng", [state["rng"]])[rank], loader_generator, device)
        result = TrainResult(**state["history"], start_epoch=state["epochs_done"])

    # The wrapper broadcasts rank 0's parameters and buffers: every rank starts from the same model.
    trained = model
    if data_parallel:
        trained = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    modes = {m: m.training for m in model.modules()}
    model.train()
    show = progress and distributed.is_main_process()
    bar = tqdm(total=max_iter, initial=result.steps, disable=not show, desc="train", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for epoch in range(result.start_epoch, config.epochs):
            criterion.set_epoch(epoch)  # alpha(t), t = epoch / epochs
            if sampler is not None:
                sampler.set_epoch(epoch)  # this epoch's shuffle, the same on every rank
            result.alphas.append(criterion.current_alpha)
            epoch_loss = 0.0
            for images, labels in loader:
                images = images.to(device, non_blocking=True, memory_format=layout)  # (N, 3, H, W)
                labels = labels.to(device, non_blocking=True)  # (N, H, W)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                loss = train_step(trained, (images, labels), criterion, optimizer, source, scaler=scaler, amp=use_amp)
                scheduler.step()
                # Every rank holds its share of the global loss (times the world size): their mean is
                # the global loss, the same number on every rank, so they all stop together on a NaN.
                loss = (distributed.all_reduce_sum(loss) / ranks).item()
                # With AMP, GradScaler skips a step whose float16 pass overflowed and training goes on.
                if not math.isfinite(loss) and not use_amp:
                    raise FloatingPointError(
                        f"train: the loss is {loss} at epoch {epoch}, step {result.steps}; "
                        f"lower TrainConfig.lr (now {config.lr}) or check the labels"
                    )
                epoch_loss += loss
                result.steps += 1
                bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update()
            result.losses.append(epoch_loss / steps_per_epoch)
            if path is None:
                continue
            rng_states = distributed.gather_objects(_rng_state(loader_generator, device))  # every rank's
            if distributed.is_main_process():
                _atomic_save(
                    {
                        "format": _CHECKPOINT_FORMAT,
                        "epochs_done": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "source": source.state_dict() if source is not None else {},
                        "rng": rng_states[0],
                        "config": dataclasses.asdict(config),
                        "dataset_size": len(dataset),
                        "history": {"losses": result.losses, "alphas": result.alphas, "steps": result.steps},
                        # Optional keys: a checkpoint without them was written by one process.
                        "world_size": ranks,
                        **({"rank_rng": rng_states} if ranks > 1 else {}),
                    },
                    path,
                )
    finally:
        bar.close()
        for m, training in modes.items():
            m.training = training
    result.wall_time = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------
# Helpers: seeding, RNG state, checkpoint files


# numpy's legacy global generator is seeded, saved and restored on purpose: user transforms and
# third-party augmentation draw from it, and a resumed run must see the same draws.


def _rank_seed(seed: int, rank: int) -> int:
    """``seed`` for rank 0 (a one-process run), a seed of its own for every other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _synchronized_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with its batch norms as ``nn.SyncBatchNorm`` (same parameters, buffers and state_dict
    keys) where torch can synchronise them: on GPUs. On the CPU, torch's SyncBatchNorm has no kernel,
    so each rank normalises over its own share of the batch, as said once in a warning."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if _has_unsynchronised_batch_norm(model) and distributed.is_main_process():
        warnings.warn(
            "TrainConfig.sync_batchnorm: torch.nn.SyncBatchNorm runs on GPUs only, so on the CPU each rank's "
            "batch norm uses the statistics of its own batch_size / world_size images",
            RuntimeWarning,
            stacklevel=3,
        )
    return model


def _has_unsynchronised_batch_norm(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm) for m in model.modules()
    )


def _check_ranks_agree(state: dict[str, Any] | None, path: str | None) -> None:
    """Every rank must resume from the same epoch (they read one shared checkpoint file)."""
    seen = distributed.gather_objects(None if state is None else state["epochs_done"])
    if len(set(seen)) > 1:
        raise RuntimeError(
            f"train: the ranks see different checkpoints at {path!r} (epochs done by rank: {seen}); "
            f"the checkpoint folder must be one folder that every rank reads (a shared file system)"
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)  # CPU and every CUDA device


def _rng_state(loader_generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state(),
        "python": random.getstate(),
        # As plain types and a tensor, so the file loads with torch.load(weights_only=True).
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_states(state: dict[str, Any], loader_generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    random.setstate(state["python"])
    saved = state["numpy"]
    numpy_state = {
        "bit_generator": "MT19937",
        "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
        "has_gauss": saved["has_gauss"],
        "gauss": saved["gauss"],
    }
    np.random.set_state(numpy_state)  # noqa: NPY002
    # A checkpoint from another device (or device count) has no matching CUDA states: keep the seeded ones.
    cuda_states = state.get("cuda")
    if device.type == "cuda" and cuda_states is not None and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def _atomic_save(obj: Any, path: str) -> None:
    atomic_write(path, lambda file: torch.save(obj, file))


_CHECKPOINT_KEYS = (
    "format",
    "epochs_done",
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "source",
    "rng",
    "config",
    "dataset_size",
    "history",
)


def _load_checkpoint(path: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch.load's failures have no common type)
        raise CheckpointError(
            f"checkpoint {path!r} is corrupt or unreadable ({type(error).__name__}: {error}); "
            f"it was left as it is: move or delete it to start over"
        ) from error
    missing = [key for key in _CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing or state["format"] != _CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path!r} is not a uaal_ext training checkpoint of format {_CHECKPOINT_FORMAT} "
            f"(missing {missing}, format {state.get('format') if isinstance(state, dict) else None!r}); "
            f"it was left as it is: move or delete it to start over"
        )
    return state


def _check_resumable(state: dict[str, Any], config: TrainConfig, dataset_size: int, path: str) -> None:
    details = changed_keys(
        state["config"],
        dataclasses.asdict(config),
        ignore=RUNTIME_FIELDS,
        defaults={**dataclasses.asdict(TrainConfig()), **VALUES_BEFORE_KEY_EXISTED},
    )
    if details:
        raise ValueError(
            f"checkpoint {path!r} was written with another TrainConfig ({details}); use the same config "
            f"or another checkpoint_path"
        )
    written_by = state.get("world_size", 1)
    if written_by != distributed.world_size():
        raise ValueError(
            f"checkpoint {path!r} was written by {written_by} process(es) and this run has "
            f"{distributed.world_size()}: relaunch with {written_by} (torchrun --nproc_per_node) to resume it, "
            f"or use another checkpoint_path"
        )
    if state["dataset_size"] != dataset_size:
        raise ValueError(
            f"checkpoint {path!r} was written for a dataset of {state['dataset_size']} images, this one has "
            f"{dataset_size}; use another checkpoint_path"
        )
