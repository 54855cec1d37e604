"""DeepLabv3+ segmentation models (segmentation_models_pytorch) with a dropout before the classifier.

The paper's three backbones plus a CPU-sized preset for tests and smoke runs::

    model = build_model("mobilenetv3", num_classes=19)      # DeepLabv3+, MobileNetV3-Large encoder
    logits = model(images)                                   # (N, 3, H, W) -> (N, 19, H, W)

Architecture (all presets): smp's ``DeepLabV3Plus``, encoder output stride 16 (or 8), and the
DeepLabv3+ paper's atrous rates for that stride: (6, 12, 18) at 16, doubled at 8 (smp's default
(12, 24, 36) is the stride-8 setting even at stride 16).

Initialisation: random by default, and then nothing is downloaded. ``encoder_weights="imagenet"``
starts the encoder from ImageNet weights the way smp and timm load them, from the Hugging Face Hub
through ``huggingface_hub`` and its cache (``HF_HOME`` / ``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1``
only the cache is read): :func:`encoder_weights_source` names the repo and files for a preset, so
an offline machine can be given a pre-filled cache. ``weights=`` loads a local state_dict of the
whole model instead.

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
from typing import Any, NamedTuple

import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_number
from .files import atomic_write

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "IMAGENET",
    "EncoderWeightsSource",
    "build_model",
    "encoder_weight_names",
    "encoder_weights_source",
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


#: The ``encoder_weights`` every preset accepts: smp's "imagenet" weights for its own encoders, and
#: timm's default pretrained tag for the "tu-" ones (an ImageNet-1k tag for all presets here).
IMAGENET = "imagenet"

_TIMM_PREFIX = "tu-"  # smp's prefix for timm encoders, whose pretrained tag is part of the model name
# What a failed fetch raises: hub errors are OSErrors (offline and not cached: LocalEntryNotFoundError,
# a FileNotFoundError) except the EntryNotFoundError family; a truncated file fails in safetensors.
_FETCH_ERRORS = (OSError, EntryNotFoundError, SafetensorError)


class EncoderWeightsSource(NamedTuple):
    """Where smp (or timm, for "tu-" encoders) fetches a preset's encoder weights from."""

    repo_id: str  # a Hugging Face Hub model repo, e.g. "timm/mobilenetv3_large_100.ra_in1k"
    revision: str  # "main", or the commit smp pins for its own encoders
    filenames: tuple[str, ...]  # the files read from it

    def download_command(self) -> str:
        """The ``hf`` command (huggingface_hub's CLI) that puts these files in the cache."""
        revision = "" if self.revision == "main" else f" --revision {self.revision}"
        return f"hf download {self.repo_id} {' '.join(self.filenames)}{revision}"


def _check_rate(arg: str, value: object) -> float:
    return check_number(arg, value, low=0.0, high=1.0, high_open=True)


def _timm_architecture(encoder_name: str) -> str | None:
    return encoder_name[len(_TIMM_PREFIX) :] if encoder_name.startswith(_TIMM_PREFIX) else None


def encoder_weight_names(name: str) -> tuple[str, ...]:
    """The ``encoder_weights`` values preset ``name`` accepts: :data:`IMAGENET` first, then smp's
    other names for its own encoder (resnet50: "ssl", "swsl") or the timm encoder's pretrained tags
    (mobilenetv3: "ra_in1k", "ra4_e3600_r224_in1k", "miil_in21k", ...)."""
    return _weight_names_of(_PRESETS[check_choice("name", name, MODELS)]["encoder_name"])


@cache  # timm's list is a scan of all its pretrained configs; configs validate with it
def _weight_names_of(encoder_name: str) -> tuple[str, ...]:
    architecture = _timm_architecture(encoder_name)
    if architecture is None:
        names = tuple(smp.encoders.encoders[encoder_name]["pretrained_settings"])
    else:
        names = tuple(sorted(tagged.partition(".")[2] for tagged in timm.list_pretrained(f"{architecture}.*")))
    return (IMAGENET, *(n for n in names if n != IMAGENET))


def _check_encoder_weights(name: str, encoder_weights: object) -> str | None:
    if encoder_weights is None:
        return None
    if not isinstance(encoder_weights, str) or not encoder_weights:
        raise ValueError(f"encoder_weights must be None or a non-empty str such as 'imagenet', got {encoder_weights!r}")
    allowed = encoder_weight_names(name)
    if encoder_weights not in allowed:
        raise ValueError(
            f"encoder_weights for model {name!r} ({_PRESETS[name]['encoder_name']}) must be None or one of "
            f"{allowed}, got {encoder_weights!r}"
        )
    return encoder_weights


def _smp_encoder_arguments(name: str, encoder_weights: str | None) -> tuple[str, str | bool | None]:
    """(``encoder_name``, ``encoder_weights``) for smp: a "tu-" encoder takes its timm tag in the name
    and ``True`` for "load pretrained" (smp warns about any string there)."""
    encoder_name = _PRESETS[name]["encoder_name"]
    if encoder_weights is None or _timm_architecture(encoder_name) is None:
        return encoder_name, encoder_weights
    return (encoder_name if encoder_weights == IMAGENET else f"{encoder_name}.{encoder_weights}"), True


def encoder_weights_source(name: str, encoder_weights: str = IMAGENET) -> EncoderWeightsSource:
    """The Hub repo, revision and files smp/timm read for preset ``name``'s ``encoder_weights`` (one of
    :func:`encoder_weight_names`): what to download into the cache of an offline machine.

    Read from smp's encoder table and timm's pretrained configs, so it follows the installed versions.
    """
    encoder_weights = _check_encoder_weights(name, encoder_weights)
    if encoder_weights is None:
        raise ValueError("encoder_weights=None means random initialisation: there is nothing to fetch")
    encoder_name = _PRESETS[name]["encoder_name"]
    architecture = _timm_architecture(encoder_name)
    if architecture is None:  # smp's own encoder: its table pins a repo and commit
        settings = smp.encoders.encoders[encoder_name]["pretrained_settings"][encoder_weights]
        return EncoderWeightsSource(settings["repo_id"], settings["revision"], ("config.json", "model.safetensors"))
    tagged = architecture if encoder_weights == IMAGENET else f"{architecture}.{encoder_weights}"
    pretrained = timm.models.get_pretrained_cfg(tagged)
    # timm asks for pytorch_model.bin and reads model.safetensors instead when the repo has one (its repos do).
    repo_id, _, revision = pretrained.hf_hub_id.partition("@")
    return EncoderWeightsSource(repo_id, revision or "main", (pretrained.hf_hub_filename or "model.safetensors",))


def _weights_unavailable(name: str, encoder_weights: str, error: Exception) -> OSError:
    source = encoder_weights_source(name, encoder_weights)
    # The hub's own message is several lines of advice about its API; its first line says what failed.
    first_line = next(iter(str(error).strip().splitlines()), "")
    searched = "only the cache (HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else "the Hub and the cache"
    return OSError(
        f"cannot get the pretrained weights of encoder {_PRESETS[name]['encoder_name']!r} (model {name!r}, "
        f"encoder_weights={encoder_weights!r}): Hugging Face Hub repo {source.repo_id!r} at revision "
        f"{source.revision!r}, files {list(source.filenames)}, searched in {searched}, cache "
        f"{hub_constants.HF_HUB_CACHE!r} ({type(error).__name__}: {first_line}). To fix: run "
        f"`{source.download_command()}` on a machine with network access and copy its cache folder "
        f"(HF_HOME, by default ~/.cache/huggingface) here or point HF_HOME / HF_HUB_CACHE at it; or check "
        f"the connection (proxy, HF_ENDPOINT); or start from random weights with encoder_weights=None "
        f"(config: encoder_weights: null)"
    )


def build_model(
    name: str = "small",
    num_classes: int = DEFAULT_NUM_CLASSES,
    *,
    dropout: float = 0.1,
    weights: str | os.PathLike | None = None,
    output_stride: int = 16,
    aspp_dropout: float = 0.5,
    encoder_weights: str | None = None,
) -> nn.Module:
    """Builds DeepLabv3+ with the encoder of preset ``name`` (one of :data:`MODELS`).

    Args:
        name: ``"mobilenetv3"`` (timm ``mobilenetv3_large_100``), ``"resnet50"``, ``"xception65"``
            (timm ``xception65``) or ``"small"`` (see ``_PRESETS``).
        num_classes: number of output channels (logits).
        dropout: rate of the ``nn.Dropout`` right before the classifier conv.
        weights: path of a local ``state_dict`` file (``torch.save(model.state_dict(), path)``; a
            checkpoint dict holding it under ``"state_dict"`` or ``"model"`` works too), loaded with
            ``weights_only=True``. None: the initialisation ``encoder_weights`` says. It sets every
            parameter, so it overrides ``encoder_weights``, whose weights are then not fetched at all.
        output_stride: 16 or 8, the encoder's output stride (dilated last stages).
        aspp_dropout: rate of smp's dropout after the ASPP projection.
        encoder_weights: None (random initialisation) or pretrained encoder weights as smp and timm
            load them: ``"imagenet"`` for every preset, or another of :func:`encoder_weight_names`
            (a timm pretrained tag, or smp's "ssl"/"swsl" for resnet50). They come from the Hugging
            Face Hub cache, downloaded on first use (:func:`encoder_weights_source` says from where);
            the decoder and classifier stay randomly initialised.

    Returns:
        an ``smp.DeepLabV3Plus`` mapping ``(N, in 3, H, W)`` images to ``(N, num_classes, H, W)``
        logits; H and W must be divisible by ``output_stride``. Its ``segmentation_head`` is
        ``Sequential(dropout, conv, upsample, activation)`` whose state_dict keys are smp's own
        (``segmentation_head.0.weight``...), so weights of a plain smp model of the same encoder load.

    Raises:
        ValueError: unknown ``name``, bad ``num_classes``/rates/``output_stride``/``encoder_weights``,
            or a weights file whose keys or shapes do not fit the model.
        FileNotFoundError / OSError: ``weights`` missing or unreadable.
        OSError: the encoder weights cannot be fetched (offline and not cached, say); the message
            names the repo, the command that fills the cache, and the other ways out.
    """
    preset = _PRESETS[check_choice("name", name, MODELS)]
    check_int("num_classes", num_classes, low=1)
    dropout = _check_rate("dropout", dropout)
    aspp_dropout = _check_rate("aspp_dropout", aspp_dropout)
    if output_stride not in (8, 16) or isinstance(output_stride, bool):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    encoder_weights = _check_encoder_weights(name, encoder_weights)
    # A weights file replaces every parameter: fetching encoder weights first would only cost a
    # download (or fail offline) for values that are overwritten.
    fetched = None if weights is not None else encoder_weights
    encoder_name, smp_encoder_weights = _smp_encoder_arguments(name, fetched)

    try:
        model = smp.DeepLabV3Plus(
            encoder_name=encoder_name,
            encoder_weights=smp_encoder_weights,
            encoder_output_stride=output_stride,
            decoder_channels=preset["decoder_channels"],
            decoder_atrous_rates=tuple(r * 16 // output_stride for r in preset["atrous_rates"]),
            decoder_aspp_dropout=aspp_dropout,
            classes=num_classes,
        )
    except _FETCH_ERRORS as error:
        if fetched is None:  # nothing was fetched: not a download problem
            raise
        raise _weights_unavailable(name, fetched, error) from error
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
