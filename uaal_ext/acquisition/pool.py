"""Scoring a pool with a model: run the passes a method needs over a DataLoader, then score or choose.

::

    picked = select_from_pool(model, loader, "entropy", k=100, exclude=labeled)   # pool indices
    scores = score_pool(model, loader, "bald", num_samples=10, seed=0)            # {index: score}

The loader yields ``(images, indices)`` batches (images ``(B, ...)``; indices a 1-D integer tensor or
a list of B ints, the images' pool indices, each at most once over the loader) or dicts with
``"image"`` and ``"index"`` keys. Images move to the device of the model's parameters.

The model runs in eval mode under ``torch.no_grad`` (batch norm with running statistics, dropout
off except for MC-Dropout's passes); every module's ``training`` flag is restored afterwards and no
parameter or buffer changes. Only the scores (or features) are kept: memory is bounded by one batch.

Scores do not depend on batch size, order or composition (beyond float rounding of the model's
batched forward): random scores are keyed by ``(seed, pool index)``; MC-Dropout runs each image on
its own with masks seeded by ``(seed, pool index)``; kernel-noise passes use the same K perturbed
models for every batch, the noise ``KernelNoise(eta, K, seed)`` draws at its first call.

In a ``torch.distributed`` group, ``gather_ranks=True`` lets each rank score its own part of the
pool (its loader yields only that part, e.g. the batches of :func:`uaal_ext.distributed.shard_batches`
or a ``DistributedSampler(shuffle=False)``): the scores (or features) of every rank are gathered and
every rank makes the same selection, the one a single process scoring the whole pool makes. An
image that two ranks yield (a sampler's padding) counts once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed
from .._validation import check_int
from ..uncertainty.base import as_logits
from ..uncertainty.kernel_noise import KernelNoise
from ..uncertainty.mc_dropout import MCDropout
from ..uncertainty.modes import eval_mode, model_device
from .base import AcquisitionMethod, Predictions, make_method
from .selection import image_key, select

__all__ = ["PassRunner", "score_pool", "select_from_pool", "pool_batches"]


def pool_batches(
    loader: Iterable, device: torch.device | None, description: str, progress: bool
) -> Iterator[tuple[Tensor, list[int]]]:
    """``(images on device, pool indices)`` per batch of ``loader``, checked, with a progress bar."""
    if progress:
        from tqdm.auto import tqdm  # only needed for the bar

        try:
            total: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:  # a generator, or a DataLoader over an IterableDataset
            total = None
        loader = tqdm(loader, desc=description, unit="batch", total=total)
    for batch in loader:
        if isinstance(batch, Mapping) and "image" in batch and "index" in batch:
            images, indices = batch["image"], batch["index"]
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            images, indices = batch
        else:
            raise TypeError(
                "the loader must yield (images, indices) pairs or dicts with 'image' and 'index' keys, got "
                f"{type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() < 1:
            got = f"dtype {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
            raise TypeError(f"the loader's images must be a floating-point tensor (N, ...), got {got}")
        if isinstance(indices, Tensor):
            if indices.dim() != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
                raise TypeError(
                    f"the loader's indices must be a 1-D integer tensor or a list of ints, got "
                    f"shape {tuple(indices.shape)} and dtype {indices.dtype}"
                )
            indices = indices.tolist()
        elif isinstance(indices, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            indices = list(indices)
        else:
            raise TypeError(f"the loader's indices must be a 1-D integer tensor or a list of ints, got {indices!r}")
        if len(indices) != images.shape[0]:
            raise ValueError(f"a batch has {images.shape[0]} images but {len(indices)} indices")
        yield (images if device is None else images.to(device)), indices


class PassRunner:
    """Runs the forward passes ``method.passes`` asks for, batch after batch, with the randomness of
    each pass keyed so that the result does not depend on how the pool is batched."""

    def __init__(self, model: nn.Module, method: AcquisitionMethod) -> None:
        self.model = model
        self.method = method
        passes = method.passes
        self._kernel_noise = (
            KernelNoise(eta=method.eta, num_samples=method.num_samples, seed=method.seed)
            if passes.kernel_noise
            else None
        )

    def __call__(self, images: Tensor, indices: list[int] | None) -> Predictions:
        """The predictions of ``images`` (pool indices ``indices``; None: positions) under no_grad;
        the caller puts the model in the mode the passes need (eval, for scoring)."""
        passes, model = self.method.passes, self.model
        positions = indices if indices is not None else list(range(images.shape[0]))
        predictions = Predictions(indices=indices, images=images)
        with torch.no_grad():
            if self._kernel_noise is not None:
                self._kernel_noise.load_state_dict({"calls": 0})  # the same K models for every batch
                predictions.logits, predictions.perturbed_logits = self._kernel_noise.perturbed_logits(model, images)
            elif passes.clean:
                predictions.logits = _checked_logits(model(images), images)
            if passes.mc_dropout:
                # One image at a time, its dropout masks seeded by (seed, pool index).
                samples = [
                    MCDropout(num_samples=self.method.num_samples, seed=image_key(self.method.seed, index) >> 1)(
                        model, images[j : j + 1]
                    )
                    for j, index in enumerate(positions)
                ]
                predictions.mc_logits = torch.cat(samples, dim=1)
        return predictions


def _checked_logits(output: object, images: Tensor) -> Tensor:
    logits = as_logits(output)
    if logits.dim() < 2 or logits.shape[0] != images.shape[0]:
        raise ValueError(
            f"the model must return (N, C, *spatial) logits with N = {images.shape[0]}, got shape {tuple(logits.shape)}"
        )
    return logits


def _record(seen: dict[int, Any], indices: list[int], values: Iterable[Any]) -> None:
    for index, value in zip(indices, values):
        if index in seen:
            raise ValueError(f"the loader yields pool index {index} twice")
        seen[index] = value


def _scores(
    model: nn.Module, loader: Iterable, method: AcquisitionMethod, progress: bool, skip: frozenset[int] = frozenset()
) -> dict[int, float]:
    """``{pool index: score}``; images whose index is in ``skip`` are not scored."""
    runner = PassRunner(model, method)
    scores: dict[int, float] = {}
    with eval_mode(model):
        for images, indices in pool_batches(loader, model_device(model), f"scoring ({method.name})", progress):
            if skip:
                keep = [j for j, index in enumerate(indices) if index not in skip]
                images, indices = images[keep], [indices[j] for j in keep]
            if not indices:
                continue
            _record(scores, indices, method.image_scores(runner(images, indices)).tolist())
    return scores


def _gathered_scores(scores: dict[int, float]) -> dict[int, float]:
    """Every rank's scores in one dict; an index two ranks scored keeps the lower rank's score."""
    merged: dict[int, float] = {}
    for part in distributed.gather_objects(scores):
        for index, score in part.items():
            merged.setdefault(index, score)
    return merged


def _gathered_features(features: Tensor, indices: list[int]) -> tuple[Tensor, list[int]]:
    """Every rank's feature rows, ordered by pool index (each index once), on ``features``' device."""
    rows: dict[int, Tensor] = {}
    for part_features, part_indices in distributed.gather_objects((features.cpu(), indices)):
        for row, index in zip(part_features, part_indices):
            rows.setdefault(index, row)
    if not rows:
        return features, indices
    order = sorted(rows)
    return torch.stack([rows[index] for index in order]).to(features.device), order


def _features(
    model: nn.Module, loader: Iterable, method: AcquisitionMethod, progress: bool
) -> tuple[Tensor, list[int]]:
    """:meth:`~.base.AcquisitionMethod.image_features` of every image ``(M, F)`` and their pool indices."""
    runner = PassRunner(model, method)
    features: list[Tensor] = []
    seen: dict[int, None] = {}
    with eval_mode(model):
        for images, indices in pool_batches(loader, model_device(model), f"features ({method.name})", progress):
            features.append(method.image_features(runner(images, indices)))
            _record(seen, indices, [None] * len(indices))
    if not features:
        return torch.empty(0, 0), []
    return torch.cat(features), list(seen)


def score_pool(
    model: nn.Module,
    loader: Iterable,
    method: Any,
    *,
    progress: bool = True,
    gather_ranks: bool = False,
    **options: Any,
) -> dict[int, float]:
    """Scores every image of a pool with ``model``: ``{pool index: score}``, higher = more informative.

    Args:
        method: a registered method name that ranks by score, or an :class:`AcquisitionMethod`.
        progress: show a tqdm progress bar.
        gather_ranks: in a ``torch.distributed`` group, return every rank's scores (each rank's
            loader yields its part of the pool; see the module docstring).
        options: the method's options for a name (``reduction``, ``q``, ``num_samples``, ``eta``,
            ``seed``; see :class:`AcquisitionMethod`).
    """
    chosen = make_method(method, **options)
    if not chosen.ranks_by_score:
        raise ValueError(
            f"method={chosen.name!r} selects by diversity and gives no per-image score; use "
            f"select_from_pool(..., {chosen.name!r})"
        )
    scores = _scores(model, loader, chosen, progress)
    return _gathered_scores(scores) if gather_ranks else scores


def select_from_pool(
    model: nn.Module,
    loader: Iterable,
    method: Any,
    k: int,
    *,
    exclude: Iterable[int] = (),
    progress: bool = True,
    gather_ranks: bool = False,
    **options: Any,
) -> list[int]:
    """The ``k`` pool indices to label next, by ``method`` (a registered name or a method object).

    Methods that rank by score: :func:`score_pool` (images in ``exclude`` are skipped, not scored),
    then :func:`~.selection.select` (best first, ties to the lower index).

    Diversity methods (``"noise_stability_kcenter"``): the features of every image the loader yields,
    then the method's ``choose`` with the images in ``exclude`` that the loader also yields (the
    labeled set) as the initial centres; labeled images the loader does not yield cannot act as
    centres, so give it the labeled images too for the full method. Returned in the order chosen.

    ``gather_ranks``: in a ``torch.distributed`` group, each rank's loader yields its part of the
    pool, and every rank returns the selection from the whole pool (k-center's features ordered by
    pool index, as a loader that yields the pool in order gives them).

    ``options`` are the method's options for a name (:class:`AcquisitionMethod`; ``grid`` for k-center).
    """
    chosen = make_method(method, **options)
    k = check_int("k", k, low=0)
    excluded = frozenset(int(i) for i in exclude)
    if chosen.ranks_by_score:
        scores = _scores(model, loader, chosen, progress, skip=excluded)
        return select(_gathered_scores(scores) if gather_ranks else scores, k, exclude=excluded)
    features, indices = _features(model, loader, chosen, progress)
    if gather_ranks:
        features, indices = _gathered_features(features, indices)
    initial = [position for position, index in enumerate(indices) if index in excluded]
    return [indices[position] for position in chosen.choose(features, k, initial)]
