"""DeepLabv3+ segmentation models (segmentation_models_pytorch) with a dropout before the classifier.

The paper's three backbones plus a CPU-sized preset for tests and smoke runs::

    model = build_model("mobilenetv3", num_classes=19)      # DeepLabv3+, MobileNetV3-Large encoder
    logits = model(images)                                   # (N, 3, H, W) -> (N, 19, H, W)

Architecture (all presets): smp's ``DeepLabV3Plus`` with random initialisation (no download is ever
attempted; pass ``weights=`` a local state_dict file instead), encoder output stride 16 (or 8), and
the DeepLabv3+ paper's atrous rates for that stride: (6, 12, 18) at 16, doubled at 8 (smp's default
(12, 24, 36) is the stride-8 setting even at stride 16).

Dropout: two layers, so MC-Dropout has something to sample and both are off in eval mode --
- ``nn.Dropout(dropout)`` right before the 1x1 classifier conv (element-wise, default 0.1, as the
  widely used PyTorch DeepLabv3+ of jfzhang95 that MC-Dropout AL baselines build on);
- smp's ASPP projection dropout, kept at smp's (and torchvision's) 0.5 via ``aspp_dropout``.
  MC-Dropout samples both; KernelNoise switches both off. ``dropout=0, aspp_dropout=0`` gives a
  deterministic network (MCDropout then refuses it).

Input size: height and width must be divisible by the output stride (16 by default); smp raises a
RuntimeError naming the size to pad to otherwise.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from functools import cache
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_number
from .files import atomic_write

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "build_model",
    "load_weights",
    "save_weights",
    "count_parameters",
    "model_info",
    "classifier_dropout",
]

MODELS: tuple[str, ...] = ("mobilenetv3", "resnet50", "xception65", "small")
#: How tables and figures name the presets.
MODEL_NAMES: dict[str, str] = {
    "mobilenetv3": "MobileNetV3",
    "resnet50": "ResNet-50",
    "xception65": "Xception-65",
    "small": "small",
}

DEFAULT_NUM_CLASSES = 19  # Cityscapes' evaluation classes

# name -> smp.DeepLabV3Plus arguments; "atrous_rates" are for output stride 16 (doubled at 8).
_PRESETS: dict[str, dict[str, Any]] = {
    "mobilenetv3": dict(encoder_name="tu-mobilenetv3_large_100", decoder_channels=256, atrous_rates=(6, 12, 18)),
    "resnet50": dict(encoder_name="resnet50", decoder_channels=256, atrous_rates=(6, 12, 18)),
    "xception65": dict(encoder_name="tu-xception65", decoder_channels=256, atrous_rates=(6, 12, 18)),
    # The paper's MobileNetV3 family at half width (small_050, full depth) and a 64-channel decoder: a
    # training step at batch 8, 64x128 is a few times cheaper than mobilenetv3's (benchmarks/train_synthetic.py).
    # At 64x128 the stride-16 map is 4x8, so the rates are scaled down to reach across it instead of
    # only into the padding.
    "small": dict(encoder_name="tu-mobilenetv3_small_050", decoder_channels=64, atrous_rates=(2, 4, 6)),
}


def _check_rate(arg: str, value: object) -> float:
    return check_number(arg, value, low=0.0, high=1.0, high_open=True)


def build_model(
    name: str = "small",
    num_classes: int = DEFAULT_NUM_CLASSES,
    *,
    dropout: float = 0.1,
    weights: str | os.PathLike | None = None,
    output_stride: int = 16,
    aspp_dropout: float = 0.5,
) -> nn.Module:
    """Builds DeepLabv3+ with the encoder of preset ``name`` (one of :data:`MODELS`).

    Args:
        name: ``"mobilenetv3"`` (timm ``mobilenetv3_large_100``), ``"resnet50"``, ``"xception65"``
            (timm ``xception65``) or ``"small"`` (see ``_PRESETS``).
        num_classes: number of output channels (logits).
        dropout: rate of the ``nn.Dropout`` right before the classifier conv.
        weights: path of a local ``state_dict`` file (``torch.save(model.state_dict(), path)``; a
            checkpoint dict holding it under ``"state_dict"`` or ``"model"`` works too), loaded with
            ``weights_only=True``. None: random initialisation.
        output_stride: 16 or 8, the encoder's output stride (dilated last stages).
        aspp_dropout: rate of smp's dropout after the ASPP projection.

    Returns:
        an ``smp.DeepLabV3Plus`` mapping ``(N, in 3, H, W)`` images to ``(N, num_classes, H, W)``
        logits; H and W must be divisible by ``output_stride``. Its ``segmentation_head`` is
        ``Sequential(dropout, conv, upsample, activation)`` whose state_dict keys are smp's own
        (``segmentation_head.0.weight``...), so weights of a plain smp model of the same encoder load.

    Raises:
        ValueError: unknown ``name``, bad ``num_classes``/rates/``output_stride``, or a weights file
            whose keys or shapes do not fit the model.
        FileNotFoundError / OSError: ``weights`` missing or unreadable.
    """
    preset = _PRESETS[check_choice("name", name, MODELS)]
    check_int("num_classes", num_classes, low=1)
    dropout = _check_rate("dropout", dropout)
    aspp_dropout = _check_rate("aspp_dropout", aspp_dropout)
    if output_stride not in (8, 16) or isinstance(output_stride, bool):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")

    model = smp.DeepLabV3Plus(
        encoder_name=preset["encoder_name"],
        encoder_weights=None,
        encoder_output_stride=output_stride,
        decoder_channels=preset["decoder_channels"],
        decoder_atrous_rates=tuple(r * 16 // output_stride for r in preset["atrous_rates"]),
        decoder_aspp_dropout=aspp_dropout,
        classes=num_classes,
    )
    # The dropout goes first under its own name; the head's modules keep their indices ("0", "1",
    # "2"), hence their state_dict keys. Dropout has no state, so eval-mode outputs are unchanged.
    head = model.segmentation_head
    model.segmentation_head = nn.Sequential(OrderedDict([("dropout", nn.Dropout(dropout)), *head.named_children()]))
    if weights is not None:
        load_weights(model, weights)
    return model


def classifier_dropout(model: nn.Module) -> nn.Module:
    """The dropout module right before the classifier of a :func:`build_model` model."""
    head = getattr(model, "segmentation_head", None)
    dropout = getattr(head, "dropout", None)
    if not isinstance(dropout, nn.Dropout):
        raise ValueError(
            f"{type(model).__name__} was not built by uaal_ext.experiment.models.build_model (no head dropout)"
        )
    return dropout


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Loads the weights file ``path`` into ``model`` (strictly) and returns the model.

    The file holds a ``state_dict`` (``torch.save(model.state_dict(), path)``), or a checkpoint dict
    holding it under ``"state_dict"`` or ``"model"``; it is read with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` is missing. OSError: it cannot be read.
        ValueError: it holds no state_dict, or one whose keys or shapes do not fit the model (the
            message lists the first few of each).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found (or not a file): {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch.load fails with many types: pickle, zip, IO)
        raise OSError(f"cannot read weights file {path!r}: {type(error).__name__}: {error}") from error
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path!r} does not hold a state_dict (a mapping of names to tensors)")

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:

        def few(keys, describe=lambda k: k):
            shown = ", ".join(describe(k) for k in keys[:5])
            return f"{len(keys)} ({shown}{', ...' if len(keys) > 5 else ''})"

        problems = []
        if missing:
            problems.append(f"missing keys: {few(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {few(unexpected)}")
        if reshaped:
            problems.append(
                "shape mismatches: "
                + few(reshaped, lambda k: f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}")
            )
        raise ValueError(
            f"weights file {path!r} does not fit {getattr(model, 'name', type(model).__name__)}: " + "; ".join(problems)
        )
    model.load_state_dict(dict(state))
    return model


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Writes the model's ``state_dict`` (on the CPU) to ``path`` atomically: a reader, or a run killed
    mid-write, sees the old file or the new one."""
    weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    atomic_write(path, lambda file: torch.save(weights, file))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@cache
def _info(name: str, num_classes: int) -> tuple[tuple[str, Any], ...]:
    preset = _PRESETS[name]
    model = build_model(name, num_classes)
    return (
        ("name", name),
        ("encoder", preset["encoder_name"]),
        ("decoder_channels", preset["decoder_channels"]),
        ("atrous_rates", preset["atrous_rates"]),
        ("num_classes", num_classes),
        ("params", count_parameters(model)),
        ("encoder_params", count_parameters(model.encoder)),
    )


def model_info(name: str, num_classes: int = DEFAULT_NUM_CLASSES) -> dict[str, Any]:
    """``{"name", "encoder", "decoder_channels", "atrous_rates", "num_classes", "params",
    "encoder_params"}`` for reports (rates at output stride 16). Builds the model once per
    ``(name, num_classes)``."""
    check_choice("name", name, MODELS)
    check_int("num_classes", num_classes, low=1)
    return dict(_info(name, num_classes))
