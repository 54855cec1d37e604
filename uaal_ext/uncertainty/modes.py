"""Context managers that make the extra forward passes of uncertainty and acquisition free of side
effects: each sets module modes or random state for the passes and restores them on exit."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd


@contextlib.contextmanager
def patched(values: Mapping[Any, Any], attribute: str) -> Iterator[None]:
    """Sets ``obj.<attribute> = value`` for each ``obj: value`` of ``values`` and, on exit, gives each
    object back exactly the instance attribute it had (or none, so a class attribute shows again)."""
    missing = object()
    saved = {obj: vars(obj).get(attribute, missing) for obj in values}
    try:
        for obj, value in values.items():
            setattr(obj, attribute, value)
        yield
    finally:
        for obj, previous in saved.items():
            if previous is missing:
                vars(obj).pop(attribute, None)
            else:
                setattr(obj, attribute, previous)


def frozen_batch_norm(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Batch norm normalises as in the model's current mode but updates no running statistic.

    Sets ``track_running_stats = False`` on every ``_BatchNorm`` module (timm's ``BatchNormAct2d``
    included) and restores it on exit. With that flag off, torch's forward uses batch statistics in
    training mode without touching ``running_mean``/``running_var``/``num_batches_tracked``, and still
    uses the running statistics in eval mode: exactly the normalisation of a normal forward.
    """
    return patched({m: False for m in model.modules() if isinstance(m, _BatchNorm)}, "track_running_stats")


def module_modes(modes: Mapping[nn.Module, bool]) -> contextlib.AbstractContextManager[None]:
    """Sets each module's own ``training`` flag (not its children's) and restores it on exit."""
    return patched(modes, "training")


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Every module in eval mode (running BN statistics, dropout off); each flag restored on exit."""
    return module_modes({m: False for m in model.modules()})


def dropout_off(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Every dropout module (``_DropoutNd``) in eval mode, the rest as they are; restored on exit."""
    return module_modes({m: False for m in model.modules() if isinstance(m, _DropoutNd)})


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seeds the generator that ``device``'s dropout draws from, restoring the global state on exit.

    Only that generator is reseeded (``torch.manual_seed`` would also queue a reseed of every CUDA
    device, changing global state that fork_rng does not restore).
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); None for a model with neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device
