"""Kernel-noise uncertainty: K forward passes with perturbed conv/linear weights, compared with the
clean pass (``docs/math.md#kernel-noise-perturbation``, ``docs/math.md#perturbation-statistics``)."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from .._validation import check_choice, check_int, check_number, check_seed
from ..ops.perturbation import GRANULARITIES, kernel_noise, perturbation_statistics
from .base import (
    Logits,
    Masks,
    Pair,
    UncertaintySource,
    as_logits,
    check_clean_logits,
    check_images,
    load_call_count,
    register_uncertainty_source,
)
from .dropout_recording import DropoutRecording, rng_state, set_rng_state
from .modes import dropout_off, frozen_batch_norm

__all__ = ["KernelNoise", "MODULE_KINDS"]

# Module kinds whose ``.weight`` KernelNoise may perturb (subclasses included: timm/smp convs, BatchNormAct2d).
MODULE_KINDS: dict[str, tuple[type, ...]] = {
    "conv": (_ConvNd,),
    "linear": (nn.Linear,),
    "norm": (_BatchNorm, nn.GroupNorm, nn.LayerNorm, _InstanceNorm),
}


def _check_replay(
    images: Tensor, clean_logits: Tensor | None, dropout_masks: DropoutRecording | None, dropout_state: Tensor | None
) -> tuple[Tensor, DropoutRecording | None] | None:
    """``(generator state, masks or None)`` that replay the clean forward's randomness, or None."""
    if dropout_masks is None and dropout_state is None:
        return None
    if dropout_masks is not None and dropout_state is not None:
        raise ValueError("pass dropout_masks or dropout_state, not both (a recording holds its generator state)")
    name = "dropout_masks" if dropout_masks is not None else "dropout_state"
    if clean_logits is None:
        raise ValueError(f"{name} replays the dropout of the forward that gave clean_logits; pass both")
    if dropout_state is not None:
        return dropout_state, None
    if not isinstance(dropout_masks, DropoutRecording):
        raise TypeError(f"dropout_masks must be what record_dropout(model) yields, got {type(dropout_masks).__name__}")
    if _with_index(dropout_masks.device) != _with_index(images.device):
        raise ValueError(
            f"dropout_masks were recorded for a forward on {dropout_masks.device}, but the images are on {images.device}"
        )
    return dropout_masks.rng_state, dropout_masks


def _with_index(device: torch.device) -> torch.device:
    """``cuda`` as the current CUDA device's index, so a recording for "cuda" matches images on it."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _like_layout(stack: Tensor, weight: Tensor) -> Tensor:
    """The (K, *shape) perturbed copies, each with ``weight``'s very strides. A conv whose weight
    layout differs from the model's own runs a slower oneDNN path: a channels-last model given
    contiguous 3x3 weights converts layouts in every conv, and even its 1x1 and depthwise kernels,
    whose size-1 dims carry other strides in a stacked copy, take a slower path."""
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(weight.dim())
    dense = weight.is_contiguous() or (channels_last is not None and weight.is_contiguous(memory_format=channels_last))
    if stack[0].stride() == weight.stride() or not dense:
        return stack
    copies = torch.empty_strided(
        (stack.shape[0], *weight.shape), (weight.numel(), *weight.stride()), dtype=stack.dtype, device=stack.device
    )
    return copies.copy_(stack)


@register_uncertainty_source
class KernelNoise(UncertaintySource):
    """Kernel-noise uncertainty: K passes with perturbed weights, compared with the clean pass.

    For each selected weight ``theta`` and k = 1..K, ``theta_k = theta + eta * ||theta|| * n_k /
    ||n_k||`` (:func:`uaal_ext.ops.kernel_noise`); per pixel ``sigma`` is the RMS over k of
    ``||softmax(z_k) - softmax(z)||`` and ``ns`` the Noise Stability score
    (``docs/math.md#perturbation-statistics``).

    Which weights: the ``.weight`` of every module of a kind named in ``include`` -- ``"conv"`` (any
    ``_ConvNd`` subclass), ``"linear"`` (``nn.Linear``), ``"norm"`` (``_BatchNorm``, ``GroupNorm``,
    ``LayerNorm``, ``InstanceNorm``) -- never biases or buffers, frozen weights included. They are
    taken in ``model.named_parameters()`` order, and that list is what ``kernel_noise`` receives, so
    a weight's noise is keyed by its position in it.

    Noise: call number c (counted in ``calls``, saved by :meth:`state_dict`) draws with ``seed`` and
    ``offset = c``, so successive training steps see fresh noise and a resumed run the same noise; a
    call that raises does not count.

    Passes: the K perturbed forwards run as one ``torch.vmap`` over ``torch.func.functional_call``
    (``chunk_size`` samples at a time, to bound memory), or one by one (``batched=False``, or when vmap
    cannot handle the model: then a warning says why, once per model). The default (``None``) batches
    on GPUs and runs one by one on the CPU: under vmap every conv becomes a grouped conv with K times
    the groups, which a GPU runs as one well-filled launch but the CPU runs slower than K plain
    passes (benchmarks/results/uncertainty_cpu.md). During the perturbed passes and the source's own
    clean pass, dropout modules are in eval mode (sigma measures the weight perturbation only) and
    batch norm normalises as the model's mode says (batch statistics in training mode, running
    statistics in eval mode) without updating anything (:func:`frozen_batch_norm`). Other stochastic
    layers (e.g. timm's DropPath with a rate > 0) are not switched off: vmap refuses their randomness
    and the sequential passes include it.

    In training (``uses_dropout_masks``), the step records the training forward's dropout masks and
    the perturbed passes multiply by them, so sigma measures the weight perturbation alone.

    Args:
        eta: relative noise size (paper: 0.01 ... 0.1); also the :attr:`uncertainty_scale`.
        num_samples: K, the number of perturbed passes.
        seed: key of the noise generator.
        granularity: ``"tensor"`` (one norm per weight) or ``"filter"`` (per output filter, dim 0).
        include: module kinds whose weights are perturbed.
        chunk_size: perturbed passes per vmap call (None: all K at once).
        batched: True: one vmap; False: one pass per sample; None: vmap on CUDA, one by one elsewhere.
    """

    name: ClassVar[str] = "kernel_noise"
    uses_dropout_masks: ClassVar[bool] = True

    def __init__(
        self,
        eta: float = 0.01,
        num_samples: int = 5,
        seed: int = 0,
        granularity: str = "tensor",
        include: str | Sequence[str] = ("conv", "linear"),
        chunk_size: int | None = None,
        batched: bool | None = None,
    ) -> None:
        self.eta = check_number("eta", eta, low=0)
        self.num_samples = check_int("num_samples", num_samples, low=1)
        self.seed = check_seed("seed", seed)
        self.granularity = check_choice("granularity", granularity, GRANULARITIES)
        include = (include,) if isinstance(include, str) else tuple(include)
        if not include or any(kind not in MODULE_KINDS for kind in include):
            raise ValueError(f"include must name one or more of {tuple(MODULE_KINDS)}, got {include!r}")
        self.include = include
        self.chunk_size = check_int("chunk_size", chunk_size, low=1, allow_none=True)
        if batched is not None and not isinstance(batched, bool):
            raise ValueError(f"batched must be True, False or None (automatic), got {batched!r}")
        self.batched = batched
        self.calls = 0
        self._sequential_models: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # vmap failed on these
        self._warned_dropout = False

    @classmethod
    def for_training(cls, *, eta: float, num_samples: int, seed: int) -> KernelNoise:
        return cls(eta=eta, num_samples=num_samples, seed=seed)

    @property
    def uncertainty_scale(self) -> float:  # type: ignore[override]
        """The scale for UAALLoss: ``u = sigma / eta`` (sigma ~ eta * |grad f . ||theta|| n|| to first
        order, ``docs/math.md#perturbation-statistics``)."""
        return self.eta

    def __call__(
        self, model: nn.Module, images: Tensor, clean_logits: Tensor | None = None, **replay: Tensor | None
    ) -> Pair:
        """Returns ``(logits (N, C, *spatial), sigma (N, *spatial))``; ``replay`` is ``dropout_masks=``
        or ``dropout_state=`` as :meth:`scores` takes them."""
        logits, sigma, _ = self.scores(model, images, clean_logits, **replay)
        return logits, sigma

    def measure(self, model: nn.Module, images: Tensor, clean: Logits, masks: Masks) -> Pair:
        return self(model, images, clean, dropout_masks=masks)

    def scores(
        self,
        model: nn.Module,
        images: Tensor,
        clean_logits: Tensor | None = None,
        *,
        dropout_masks: DropoutRecording | None = None,
        dropout_state: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(logits (N, C, *spatial), sigma (N, *spatial), ns (N, *spatial))``: the clean
        logits, the kernel-noise uncertainty and the Noise Stability score.

        ``logits`` are ``clean_logits`` (detached) when given -- pass the training forward's output
        to skip the clean pass -- or the clean forward the source ran itself.

        A clean forward with active dropout is matched by one of (else its masks differ, see the
        warning):

        - ``dropout_masks``: the :func:`record_dropout` recording of the forward that produced
          ``clean_logits``. The perturbed passes multiply by its masks instead of drawing new ones
          (the fast way: no mask is drawn again) and restore its generator state before each pass,
          so any other random op of the model repeats too.
        - ``dropout_state``: the random generator state of the images' device taken right before
          that forward (:func:`rng_state`). The perturbed passes restore it before each pass and so
          redraw the very masks of the clean forward.

        Either way sigma measures the weight perturbation alone, without a second clean pass, and
        the generator is left as the clean forward left it.
        """
        clean, outputs = self._passes(model, images, clean_logits, dropout_masks, dropout_state)
        with torch.no_grad():
            sigma, ns = perturbation_statistics(clean.to(outputs.dtype), outputs)
        return clean, sigma, ns

    def perturbed_logits(self, model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(clean logits (N, C, *spatial), perturbed logits (K, N, C, *spatial))`` of one call: the
        passes themselves, for callers that compute more than sigma and ns from them."""
        return self._passes(model, images, None, None, None)

    def perturbed_parameters(self, model: nn.Module) -> dict[str, Tensor]:
        """``{name: (K, *param.shape)}``: the weights the last call used (before any call: the next one's)."""
        with torch.no_grad():
            return self._draw(self._weights(model), offset=max(self.calls - 1, 0))

    def state_dict(self) -> dict[str, int]:
        """The call counter: with the same seed, a resumed run draws the same noise."""
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.calls = load_call_count(type(self).__name__, state)

    def _passes(
        self,
        model: nn.Module,
        images: Tensor,
        clean_logits: Tensor | None,
        dropout_masks: DropoutRecording | None,
        dropout_state: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The clean logits and the K perturbed ones of call number ``calls``; counts the call."""
        check_images(images)
        weights = self._weights(model)
        replay = _check_replay(images, clean_logits, dropout_masks, dropout_state)
        if clean_logits is not None:
            clean_logits = check_clean_logits(clean_logits, images)
            if replay is None:
                self._warn_if_clean_has_dropout(model)
        # Dropout off (a dropout-free comparison), unless the clean forward's masks are replayed.
        dropout = contextlib.nullcontext() if replay is not None else dropout_off(model)
        with torch.no_grad(), frozen_batch_norm(model), dropout:
            perturbed = self._draw(weights, offset=self.calls)
            clean = as_logits(model(images)) if clean_logits is None else clean_logits
            if replay is None:
                outputs = self._perturbed_outputs(model, images, perturbed)  # (K, N, C, *spatial)
            else:
                outputs = self._replayed_outputs(model, images, perturbed, *replay)
            if clean.shape != outputs.shape[1:]:
                raise ValueError(
                    f"clean_logits must have the shape of the model's logits {tuple(outputs.shape[1:])}, "
                    f"got {tuple(clean.shape)}"
                )
        self.calls += 1
        return clean, outputs

    def _weights(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        kinds = tuple(t for kind in self.include for t in MODULE_KINDS[kind])
        chosen = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), nn.Parameter)
        }
        weights = [(name, p) for name, p in model.named_parameters() if id(p) in chosen]
        if not weights:
            raise ValueError(
                f"include={self.include!r} matches no weight of {type(model).__name__}; "
                f"choose from {tuple(MODULE_KINDS)}"
            )
        return weights

    def _draw(self, weights: list[tuple[str, Tensor]], offset: int) -> dict[str, Tensor]:
        noisy = kernel_noise(
            [p.detach() for _, p in weights],
            self.num_samples,
            self.eta,
            seed=self.seed,
            offset=offset,
            granularity=self.granularity,
        )
        return {name: _like_layout(w, p) for (name, p), w in zip(weights, noisy)}

    def _perturbed_outputs(self, model: nn.Module, images: Tensor, perturbed: dict[str, Tensor]) -> Tensor:
        batched = images.is_cuda if self.batched is None else self.batched
        if batched and model not in self._sequential_models:
            try:
                outputs = torch.vmap(
                    lambda params: functional_call(model, params, (images,)),
                    randomness="error",
                    chunk_size=self.chunk_size,
                )(perturbed)
            except Exception as error:  # noqa: BLE001  (vmap's failures have no common type)
                # The model's own errors (bad input) are raised again by the sequential passes;
                # only a model they run on is marked as one vmap cannot batch.
                outputs = self._sequential_outputs(model, images, perturbed)
                self._sequential_models.add(model)
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                warnings.warn(
                    f"KernelNoise: torch.vmap cannot batch the perturbed passes of {type(model).__name__} "
                    f"({reason}); running the {self.num_samples} passes one by one instead",
                    RuntimeWarning,
                    stacklevel=5,
                )
                return outputs
            return as_logits(outputs)
        return self._sequential_outputs(model, images, perturbed)

    def _replayed_outputs(
        self,
        model: nn.Module,
        images: Tensor,
        perturbed: dict[str, Tensor],
        generator_state: Tensor,
        masks: DropoutRecording | None,
    ) -> Tensor:
        """The passes one by one, each from the clean forward's generator state and, when recorded,
        with its dropout masks: the clean forward's randomness in every pass."""
        after_clean = rng_state(images.device)
        outputs = []
        try:
            for k in range(self.num_samples):
                set_rng_state(images.device, generator_state)
                with masks.replaying(model) if masks is not None else contextlib.nullcontext():
                    outputs.append(_perturbed_pass(model, images, perturbed, k))
        finally:
            set_rng_state(images.device, after_clean)
        return torch.stack(outputs)

    def _sequential_outputs(self, model: nn.Module, images: Tensor, perturbed: dict[str, Tensor]) -> Tensor:
        return torch.stack([_perturbed_pass(model, images, perturbed, k) for k in range(self.num_samples)])

    def _warn_if_clean_has_dropout(self, model: nn.Module) -> None:
        if self._warned_dropout:
            return
        if any(isinstance(m, _DropoutNd) and m.training and m.p > 0 for m in model.modules()):
            self._warned_dropout = True
            warnings.warn(
                "KernelNoise: clean_logits come from a forward with active dropout, which the perturbed "
                "passes switch off, so sigma mixes dropout noise with the weight perturbation; pass "
                "dropout_masks=recording from `with record_dropout(model) as recording:` around that forward, "
                "or dropout_state=rng_state(device) taken before it (the passes then replay its masks), "
                "or leave clean_logits out (the source runs a dropout-free clean pass)",
                RuntimeWarning,
                stacklevel=5,
            )

    def __repr__(self) -> str:
        return (
            f"KernelNoise(eta={self.eta}, num_samples={self.num_samples}, seed={self.seed}, "
            f"granularity={self.granularity!r}, include={self.include!r}, chunk_size={self.chunk_size}, "
            f"batched={self.batched}, calls={self.calls})"
        )


def _perturbed_pass(model: nn.Module, images: Tensor, perturbed: dict[str, Tensor], k: int) -> Tensor:
    """The model's logits with perturbed weight copy ``k`` in place of its weights."""
    return as_logits(functional_call(model, {name: w[k] for name, w in perturbed.items()}, (images,)))
