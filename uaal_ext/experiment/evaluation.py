"""Evaluation of a segmentation model on a labeled split: mIoU and friends, and how well uncertainty
maps find the model's errors. In a ``torch.distributed`` group every rank evaluates its share of the
batches and the counts are summed, so each rank returns what one process would."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import distributed
from .._validation import check_int
from ..metrics import ConfusionMatrix, SegmentationMetrics, UncertaintyQuality
from ..uncertainty import UncertaintySource, uncertainty_source_class

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    ignore_index: int = 255,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
    quality_sources: Sequence[str | UncertaintySource] = (),
    eta: float = 0.01,
    num_samples: int = 5,
    seed: int = 0,
) -> SegmentationMetrics:
    """mIoU, per-class IoU and accuracies of ``model``'s argmax predictions on ``dataset``, and how
    well each of ``quality_sources`` finds the model's errors.

    ``quality_sources``: uncertainty sources (registered names, or sources already built) whose maps
    are judged as detectors of the model's own errors (:class:`uaal_ext.metrics.UncertaintyQuality`:
    AUROC, AUPR, and the ECE of the softmax confidence); names are built with ``eta``,
    ``num_samples`` and ``seed`` as training builds them. Every source measures the eval-mode model
    whose predictions are scored. The results are in ``metrics.uncertainty_quality[name]``.

    Runs in eval mode under ``torch.no_grad`` and restores every module's training flag afterwards.

    In a ``torch.distributed`` group, every rank calls it with the same arguments (``device`` its
    own): rank r evaluates batches r, r + world size, ... of the ones a single process makes, the
    confusion matrices and error-detection histograms are summed over the ranks, and a source's
    random draws for batch b are the ones a single process makes for batch b: every rank returns
    the single-process metrics.
    """
    check_int("evaluate: num_classes", num_classes, low=1)
    check_int("evaluate: batch_size", batch_size, low=1)
    sources = {}
    for item in quality_sources:
        source = (
            item
            if isinstance(item, UncertaintySource)
            else uncertainty_source_class(item).for_training(eta=eta, num_samples=num_samples, seed=seed)
        )
        sources[source.name] = source
    device = torch.device(device)
    batches = distributed.shard_batches(len(dataset), batch_size)
    numbers = distributed.batch_numbers(len(dataset), batch_size)  # each batch's single-process position
    loader = DataLoader(dataset, batch_sampler=batches, pin_memory=device.type == "cuda")
    # A random source numbers its calls ("calls" in its state_dict, uaal_ext.uncertainty.base); a rank
    # that skips other ranks' batches moves the count to the batch's own number.
    first_calls = {name: source.state_dict().get("calls") for name, source in sources.items()}
    sharded = distributed.world_size() > 1
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    qualities = {name: UncertaintyQuality(ignore_index=ignore_index) for name in sources}
    modes = {m: m.training for m in model.modules()}
    model.to(device).eval()
    show = progress and distributed.is_main_process()
    try:
        with torch.no_grad():
            for number, (images, labels) in zip(
                numbers, tqdm(loader, disable=not show, desc="evaluate", dynamic_ncols=True)
            ):
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                logits = model(images)  # (N, C, H, W)
                prediction = logits.argmax(dim=1)
                confusion.update(prediction, labels)
                if sources:
                    confidence = torch.softmax(logits.float(), dim=1).amax(dim=1)
                    for name, source in sources.items():
                        if sharded and first_calls[name] is not None:
                            source.load_state_dict({**source.state_dict(), "calls": first_calls[name] + number})
                        _, uncertainty = source(model, images, clean_logits=logits)
                        qualities[name].update(uncertainty, prediction, labels, confidence)
    finally:
        for m, training in modes.items():
            m.training = training
    if sharded:
        total_batches = -(-len(dataset) // batch_size)
        for name, source in sources.items():
            if first_calls[name] is not None:  # as many calls as one process makes
                source.load_state_dict({**source.state_dict(), "calls": first_calls[name] + total_batches})
        confusion.sync_ranks()
        for quality in qualities.values():
            quality.sync_ranks()
    metrics = confusion.compute()
    return dataclasses.replace(metrics, uncertainty_quality={name: q.compute() for name, q in qualities.items()})
