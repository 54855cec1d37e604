"""What an acquisition method is, and the registry that the loop, the CLI, the maps and the reports read.

A method is a class: it declares the forward passes it needs from the model for every pool image
(:class:`Passes`), turns what those passes gave (:class:`Predictions`) into a per-pixel map, then one
score per image, and chooses images. Built-in methods live in :mod:`.methods`; a user-defined one
plugs in by subclassing :class:`AcquisitionMethod` and registering the class::

    @register_method
    class VariationRatio(AcquisitionMethod):
        name = "variation_ratio"
        display_name = "Variation ratio"
        passes = Passes(mc_dropout=True)
        default_samples = 10

        def pixel_map(self, predictions):
            votes = predictions.mc_logits.argmax(dim=2)             # (T, N, *spatial)
            agree = (votes == votes.mode(dim=0).values).float().mean(dim=0)
            return 1.0 - agree                                      # (N, *spatial), higher = less agreed

Higher scores always mean more informative images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._registry import Registry
from .._validation import check_choice, check_int, check_number, check_seed
from ..ops.scores import AGGREGATIONS, aggregate_scores


@dataclass(frozen=True)
class Passes:
    """The forward passes a method needs from the model for every pool image."""

    clean: bool = False  # one eval-mode forward: Predictions.logits (N, C, *spatial)
    mc_dropout: bool = False  # T forwards with dropout active: Predictions.mc_logits (T, N, C, *spatial)
    kernel_noise: bool = False  # K forwards with perturbed weights: Predictions.perturbed_logits (K, N, C, ...)

    def __post_init__(self) -> None:
        if self.kernel_noise and not self.clean:
            raise ValueError(
                "Passes(kernel_noise=True) needs clean=True: perturbed passes are compared with the clean one"
            )

    @property
    def runs_model(self) -> bool:
        """Whether any pass runs the model (a method needing none scores without one)."""
        return self.clean or self.mc_dropout or self.kernel_noise

    @property
    def inputs(self) -> tuple[str, ...]:
        """The :class:`Predictions` fields these passes fill, in the order the functional API names them."""
        names = (("logits", self.clean), ("mc_logits", self.mc_dropout), ("perturbed_logits", self.kernel_noise))
        return tuple(name for name, used in names if used)

    def forwards_per_image(self, num_samples: int) -> int:
        """How many forward passes one pool image costs with T (or K) = ``num_samples``."""
        return int(self.clean) + num_samples * (int(self.mc_dropout) + int(self.kernel_noise))


@dataclass
class Predictions:
    """What the passes gave for a batch of N images (fields a method did not ask for are None)."""

    logits: Tensor | None = None  # (N, C, *spatial)
    mc_logits: Tensor | None = None  # (T, N, C, *spatial)
    perturbed_logits: Tensor | None = None  # (K, N, C, *spatial), the same K models for every batch
    indices: list[int] | None = field(default=None)  # the images' pool indices; None: positions 0..N-1
    images: Tensor | None = None  # (N, ...) the inputs, when the passes ran on a model

    def reference(self) -> Tensor:
        """A tensor of the batch (for its size, dtype and device): the first field that is set."""
        for value in (self.logits, self.mc_logits, self.perturbed_logits, self.images):
            if value is not None:
                return value
        raise ValueError("Predictions holds no tensor")

    @property
    def num_images(self) -> int:
        if self.logits is not None or (self.mc_logits is None and self.perturbed_logits is None):
            return self.reference().shape[0]
        return self.reference().shape[1]


class AcquisitionMethod:
    """Base class of the acquisition methods.

    Class attributes say what the method is; the instance holds its options:

    Args:
        reduction: how an image's valid pixel scores become one: ``"mean"``, ``"sum"``, ``"max"`` or
            ``"topk_mean"`` (the mean of the top fraction ``q``).
        q: that fraction, in (0, 1].
        num_samples: T (MC-Dropout) or K (kernel noise); None: the class's ``default_samples``.
        eta: the relative kernel-noise size of the perturbed passes.
        seed: the key of every random draw (random scores, dropout masks, weight noise).
    """

    name: ClassVar[str] = ""  # registry key and config value, e.g. "entropy"
    display_name: ClassVar[str] = ""  # for tables and figures, e.g. "Entropy"
    map_label: ClassVar[str] = ""  # what its pixel map measures, for colour bars (default: display_name)
    passes: ClassVar[Passes] = Passes()  # what the model must run for every pool image
    default_samples: ClassVar[int] = 1  # T or K when num_samples is None
    has_pixel_map: ClassVar[bool] = True  # False: scores whole images (random)
    ranks_by_score: ClassVar[bool] = True  # False: chooses by diversity from image_features (k-center)
    random_scores: ClassVar[bool] = False  # scores are random draws (a seed or generator sets them)

    def __init__(
        self,
        *,
        reduction: str = "mean",
        q: float = 0.1,
        num_samples: int | None = None,
        eta: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.reduction = check_choice("reduction", reduction, AGGREGATIONS)
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ValueError(f"q must be a number in (0, 1] (the top fraction for 'topk_mean'), got {q!r}")
        self.q = float(q)
        self.num_samples = check_int("num_samples", num_samples, low=1, allow_none=True) or self.default_samples
        self.eta = check_number("eta", eta, low=0)
        self.seed = check_seed("seed", seed)

    # ---- what a subclass provides ----------------------------------------------------------------------

    def pixel_map(self, predictions: Predictions) -> Tensor:
        """Per-pixel scores ``(N, *spatial)``, higher = more informative."""
        raise NotImplementedError(f"{type(self).__name__} has no per-pixel map")

    def image_scores(self, predictions: Predictions, valid: Tensor | None = None) -> Tensor:
        """One score per image ``(N,)``: the pixel map aggregated over each image's ``valid`` pixels
        (None: all) by ``reduction``; an image without a valid pixel scores 0."""
        return aggregate_scores(self.pixel_map(predictions), valid, self.reduction, self.q)

    def image_features(self, predictions: Predictions) -> Tensor:
        """``(N, F)`` features that diversity methods (``ranks_by_score = False``) choose from."""
        raise NotImplementedError(f"{type(self).__name__} ranks images by score and has no features")

    def choose(self, features: Tensor, k: int, initial: list[int]) -> list[int]:
        """Diversity methods: ``k`` rows of ``features`` ``(M, F)`` to label, given the rows already
        labeled (``initial``); returned in the order chosen."""
        raise NotImplementedError(f"{type(self).__name__} ranks images by score; it does not choose by features")

    # ---- shared -------------------------------------------------------------------------------------

    def forwards_per_image(self) -> int:
        """Forward passes one pool image costs this method."""
        return self.passes.forwards_per_image(self.num_samples)

    def options(self) -> dict[str, Any]:
        return {
            "reduction": self.reduction,
            "q": self.q,
            "num_samples": self.num_samples,
            "eta": self.eta,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options().items())
        return f"{type(self).__name__}({options})"


#: Every acquisition method by name; "initial" is the experiment state's name of the shared round 0.
METHODS: Registry[type[AcquisitionMethod]] = Registry("acquisition method", "method", reserved=("initial",))


def register_method(cls: type[AcquisitionMethod]) -> type[AcquisitionMethod]:
    """Adds ``cls`` to the registry under ``cls.name`` (usable as a class decorator) and returns it.

    From then on the name works everywhere a method name does: ``select_from_pool``, the experiment
    config's ``methods``, ``uaal maps``, the reports. Registering another class under a taken name
    raises ValueError.
    """
    if not (isinstance(cls, type) and issubclass(cls, AcquisitionMethod)):
        raise TypeError(f"register_method takes an AcquisitionMethod subclass, got {cls!r}")
    if not isinstance(cls.passes, Passes):
        raise TypeError(f"{cls.__name__}.passes must be a Passes(...), got {cls.passes!r}")
    METHODS.add(cls.name, cls)
    cls.display_name = cls.display_name or cls.name
    cls.map_label = cls.map_label or cls.display_name
    return cls


def method_names() -> tuple[str, ...]:
    """Every registered method, built-in ones first, in registration order."""
    return METHODS.names()


def method_class(name: object) -> type[AcquisitionMethod]:
    """The class registered as ``name``; ValueError listing the registered names otherwise."""
    return METHODS.get(name)


def make_method(method: object, **options: Any) -> AcquisitionMethod:
    """``method`` itself if it is an :class:`AcquisitionMethod` (then ``options`` must be empty), else
    the registered class of that name built with ``options``."""
    if isinstance(method, AcquisitionMethod):
        if options:
            raise ValueError(f"options {sorted(options)} are for a method name; {method!r} is built already")
        return method
    return method_class(method)(**options)


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores are float64 for float64 logits, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
