"""Per-pixel uncertainty sources for UAAL training and for selection.

Every source is called the same way, ``source(model, images, clean_logits=None) -> (logits,
uncertainty)``, and carries the ``uncertainty_scale`` to give :class:`uaal_ext.UAALLoss`:

- :class:`KernelNoise`: K forward passes with noisy conv/linear weights (SPEC 2, paper Eq. 1); the
  uncertainty is ``sigma``, the RMS deviation of the perturbed softmax from the clean one (scale eta).
- :class:`EntropyUncertainty`: the normalised softmax entropy of the clean logits (scale 1).
- :class:`MCDropoutUncertainty`: the spread of T MC-Dropout softmax samples (scale 1), built on
  :class:`MCDropout`, which returns the samples themselves.

The training glue::

    with record_dropout(model) as masks:                      # only needed if the model has dropout
        out = model(x)                                        # (N, C, H, W), training forward
    _, sigma = kn(model, x, clean_logits=out.detach(), dropout_masks=masks)  # (N, H, W), no graph
    loss = uaal_ext.UAALLoss(uncertainty_scale=kn.eta)(out, y, uncertainty=sigma)
    loss.backward()

None of these builds an autograd graph, changes a parameter or a buffer, draws from (or reseeds) the
global random generators, or leaves a module's ``training`` flag changed.
"""
from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from typing import Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ._dropout import DropoutRecording, record_dropout, rng_state
from .loss import pixel_entropy
from .perturbation import GRANULARITIES, kernel_noise, perturbation_statistics

__all__ = [
    "UNCERTAINTY_SOURCES",
    "UncertaintySource",
    "KernelNoise",
    "MCDropout",
    "MCDropoutUncertainty",
    "EntropyUncertainty",
    "make_uncertainty",
    "frozen_batch_norm",
    "record_dropout",
    "DropoutRecording",
    "rng_state",
]

UNCERTAINTY_SOURCES = ("kernel_noise", "entropy", "mc_dropout")

# Module kinds whose ``.weight`` KernelNoise may perturb (subclasses included: timm/smp convs, BatchNormAct2d).
_MODULE_KINDS: Dict[str, Tuple[type, ...]] = {
    "conv": (_ConvNd,),
    "linear": (nn.Linear,),
    "norm": (_BatchNorm, nn.GroupNorm, nn.LayerNorm, _InstanceNorm),
}


class UncertaintySource(Protocol):
    """What :func:`make_uncertainty` returns."""

    uncertainty_scale: float

    def __call__(
        self, model: nn.Module, images: Tensor, clean_logits: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        """Returns ``(logits (N, C, *spatial), uncertainty (N, *spatial))``, neither with a graph."""
        ...


# ---------------------------------------------------------------------------------------------------
# Context managers that make extra forward passes side-effect free


@contextlib.contextmanager
def frozen_batch_norm(model: nn.Module) -> Iterator[None]:
    """Batch norm normalises as in the model's current mode but updates no running statistic.

    Sets ``track_running_stats = False`` on every ``_BatchNorm`` module (timm's ``BatchNormAct2d``
    included) and restores it on exit. With that flag off, torch's forward uses batch statistics in
    training mode without touching ``running_mean``/``running_var``/``num_batches_tracked``, and still
    uses the running statistics in eval mode: exactly the normalisation of a normal forward.
    """
    modules = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [m.track_running_stats for m in modules]
    try:
        for m in modules:
            m.track_running_stats = False
        yield
    finally:
        for m, flag in zip(modules, saved):
            m.track_running_stats = flag


@contextlib.contextmanager
def _module_modes(modes: Mapping[nn.Module, bool]) -> Iterator[None]:
    """Sets each module's own ``training`` flag (not its children's) and restores it on exit."""
    saved = {m: m.training for m in modes}
    try:
        for m, training in modes.items():
            m.training = training
        yield
    finally:
        for m, training in saved.items():
            m.training = training


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
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


# ---------------------------------------------------------------------------------------------------
# Checks shared by the sources


def _as_logits(output: object) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model must return a logits Tensor of shape (N, C, *spatial), got {type(output).__name__}"
        )
    return output


def _check_images(images: object) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() < 1:
        if isinstance(images, Tensor):
            got = f"{images.dtype} tensor of shape {tuple(images.shape)}"
        else:
            got = type(images).__name__
        raise TypeError(f"images must be a floating-point tensor (N, ...), got {got}")


def _check_clean_logits(clean_logits: object, images: Tensor) -> Tensor:
    if not isinstance(clean_logits, Tensor):
        raise TypeError(f"clean_logits must be a Tensor or None, got {type(clean_logits).__name__}")
    if clean_logits.dim() < 2 or clean_logits.shape[0] != images.shape[0]:
        raise ValueError(
            f"clean_logits must be (N, C, *spatial) with N = images.shape[0] = {images.shape[0]}, "
            f"got shape {tuple(clean_logits.shape)}"
        )
    return clean_logits.detach()


def _check_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if allow_none else ''}, got {value!r}")


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


def _check_replay(
    images: Tensor,
    clean_logits: Optional[Tensor],
    dropout_masks: Optional[DropoutRecording],
    dropout_state: Optional[Tensor],
) -> Optional[Tuple[Tensor, Optional[DropoutRecording]]]:
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
        raise TypeError(
            f"dropout_masks must be what record_dropout(model) yields, got {type(dropout_masks).__name__}"
        )
    if dropout_masks.device.type != images.device.type:
        raise ValueError(
            f"dropout_masks were recorded for a forward on {dropout_masks.device}, but the images are on {images.device}"
        )
    return dropout_masks.rng_state, dropout_masks


def _load_calls(owner: str, state: Mapping[str, object]) -> int:
    calls = state.get("calls") if isinstance(state, Mapping) else None
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
        raise ValueError(f"{owner}.load_state_dict: state must be {{'calls': int >= 0}}, got {state!r}")
    return calls


def _like_layout(stack: Tensor, weight: Tensor) -> Tensor:
    """The (K, *shape) perturbed copies, each with ``weight``'s very strides. A conv whose weight
    layout differs from the model's own runs a slower oneDNN path: a channels-last model given
    contiguous 3x3 weights converts layouts in every conv (passes measured 2x slower), and even its
    1x1 and depthwise kernels, whose size-1 dims carry other strides in a stacked copy, cost 1.2x."""
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(weight.dim())
    dense = weight.is_contiguous() or (channels_last is not None and weight.is_contiguous(memory_format=channels_last))
    if stack[0].stride() == weight.stride() or not dense:
        return stack
    copies = torch.empty_strided(
        (stack.shape[0], *weight.shape), (weight.numel(), *weight.stride()), dtype=stack.dtype, device=stack.device
    )
    return copies.copy_(stack)


# ---------------------------------------------------------------------------------------------------
# Kernel noise


class KernelNoise:
    """Kernel-noise uncertainty: K passes with perturbed weights, compared with the clean pass.

    For each selected weight ``theta`` and k = 1..K, ``theta_k = theta + eta * ||theta|| * n_k /
    ||n_k||`` (``uaal_ext.perturbation.kernel_noise``); per pixel ``sigma`` is the RMS over k of
    ``||softmax(z_k) - softmax(z)||`` and ``ns`` the Noise Stability score (SPEC 2).

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
    on GPUs and runs one by one on the CPU: under vmap every conv becomes a grouped conv with K times the
    groups, which a GPU runs as one well-filled launch but the CPU runs 1.2-1.7x slower than K plain
    passes (benchmarks/results/uncertainty_cpu.md). During the
    perturbed passes and kn's own clean pass, dropout modules are in eval mode (sigma measures the
    weight perturbation only) and batch norm normalises as the model's mode says (batch statistics
    in training mode, running statistics in eval mode) without updating anything
    (:func:`frozen_batch_norm`). Other stochastic layers (e.g. timm's DropPath with a rate > 0) are
    not switched off: vmap refuses their randomness and the sequential passes include it.

    Args:
        eta: relative noise size (paper: 0.01 ... 0.1); also the :attr:`uncertainty_scale`.
        num_samples: K, the number of perturbed passes.
        seed: key of the noise generator.
        granularity: ``"tensor"`` (one norm per weight) or ``"filter"`` (per output filter, dim 0).
        include: module kinds whose weights are perturbed.
        chunk_size: perturbed passes per vmap call (None: all K at once).
        batched: True: one vmap; False: one pass per sample; None: vmap on CUDA, one by one elsewhere.
    """

    def __init__(
        self,
        eta: float = 0.01,
        num_samples: int = 5,
        seed: int = 0,
        granularity: str = "tensor",
        include: Union[str, Sequence[str]] = ("conv", "linear"),
        chunk_size: Optional[int] = None,
        batched: Optional[bool] = None,
    ) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        _check_positive_int("num_samples", num_samples)
        _check_seed(seed)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        include = (include,) if isinstance(include, str) else tuple(include)
        if not include or any(kind not in _MODULE_KINDS for kind in include):
            raise ValueError(f"include must name one or more of {tuple(_MODULE_KINDS)}, got {include!r}")
        _check_positive_int("chunk_size", chunk_size, allow_none=True)
        self.eta = float(eta)
        self.num_samples = num_samples
        self.seed = seed
        self.granularity = granularity
        self.include = include
        self.chunk_size = chunk_size
        if batched is not None and not isinstance(batched, bool):
            raise ValueError(f"batched must be True, False or None (automatic), got {batched!r}")
        self.batched = batched
        self.calls = 0
        self._sequential_models: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # vmap failed on these
        self._warned_dropout = False

    @property
    def uncertainty_scale(self) -> float:
        """The scale for UAALLoss: ``u = sigma / eta`` (SPEC 2: sigma ~ eta * |grad f . ||theta|| n||)."""
        return self.eta

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        clean_logits: Optional[Tensor] = None,
        *,
        dropout_masks: Optional[DropoutRecording] = None,
        dropout_state: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Returns ``(logits (N, C, *spatial), sigma (N, *spatial))``.

        ``logits`` are ``clean_logits`` (detached) when given -- pass the training forward's output
        to skip the clean pass -- or the clean forward kn ran itself.

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
        logits, sigma, _ = self.scores(
            model, images, clean_logits, dropout_masks=dropout_masks, dropout_state=dropout_state
        )
        return logits, sigma

    def scores(
        self,
        model: nn.Module,
        images: Tensor,
        clean_logits: Optional[Tensor] = None,
        *,
        dropout_masks: Optional[DropoutRecording] = None,
        dropout_state: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Like ``__call__`` but also returns the Noise Stability score: ``(logits, sigma, ns)``."""
        _check_images(images)
        weights = self._weights(model)
        replay = _check_replay(images, clean_logits, dropout_masks, dropout_state)
        if clean_logits is not None:
            clean_logits = _check_clean_logits(clean_logits, images)
            if replay is None:
                self._warn_if_clean_has_dropout(model)
        # Dropout off (a dropout-free comparison), unless the clean forward's masks are replayed.
        dropout_off = {} if replay is not None else {m: False for m in model.modules() if isinstance(m, _DropoutNd)}
        with torch.no_grad(), frozen_batch_norm(model), _module_modes(dropout_off):
            perturbed = self._draw(weights, offset=self.calls)
            clean = _as_logits(model(images)) if clean_logits is None else clean_logits
            if replay is None:
                outputs = self._perturbed_logits(model, images, perturbed)  # (K, N, C, *spatial)
            else:
                outputs = self._replayed_logits(model, images, perturbed, *replay)
            if clean.shape != outputs.shape[1:]:
                raise ValueError(
                    f"clean_logits must have the shape of the model's logits {tuple(outputs.shape[1:])}, "
                    f"got {tuple(clean.shape)}"
                )
            sigma, ns = perturbation_statistics(clean.to(outputs.dtype), outputs)
        self.calls += 1
        return clean, sigma, ns

    def perturbed_parameters(self, model: nn.Module) -> Dict[str, Tensor]:
        """``{name: (K, *param.shape)}``: the weights the last call used (before any call: the next one's)."""
        with torch.no_grad():
            return self._draw(self._weights(model), offset=max(self.calls - 1, 0))

    def state_dict(self) -> Dict[str, int]:
        """The call counter: with the same seed, a resumed run draws the same noise."""
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.calls = _load_calls(type(self).__name__, state)

    def _weights(self, model: nn.Module) -> List[Tuple[str, Tensor]]:
        kinds = tuple(t for kind in self.include for t in _MODULE_KINDS[kind])
        chosen = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), nn.Parameter)
        }
        weights = [(name, p) for name, p in model.named_parameters() if id(p) in chosen]
        if not weights:
            raise ValueError(
                f"include={self.include!r} matches no weight of {type(model).__name__}; "
                f"choose from {tuple(_MODULE_KINDS)}"
            )
        return weights

    def _draw(self, weights: List[Tuple[str, Tensor]], offset: int) -> Dict[str, Tensor]:
        noisy = kernel_noise(
            [p.detach() for _, p in weights],
            self.num_samples,
            self.eta,
            seed=self.seed,
            offset=offset,
            granularity=self.granularity,
        )
        return {name: _like_layout(w, p) for (name, p), w in zip(weights, noisy)}

    def _perturbed_logits(self, model: nn.Module, images: Tensor, perturbed: Dict[str, Tensor]) -> Tensor:
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
                outputs = self._sequential_logits(model, images, perturbed)
                self._sequential_models.add(model)
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                warnings.warn(
                    f"KernelNoise: torch.vmap cannot batch the perturbed passes of {type(model).__name__} "
                    f"({reason}); running the {self.num_samples} passes one by one instead",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return outputs
            return _as_logits(outputs)
        return self._sequential_logits(model, images, perturbed)

    def _replayed_logits(
        self,
        model: nn.Module,
        images: Tensor,
        perturbed: Dict[str, Tensor],
        generator_state: Tensor,
        masks: Optional[DropoutRecording],
    ) -> Tensor:
        """The passes one by one, each from the clean forward's generator state and, when recorded,
        with its dropout masks: the clean forward's randomness in every pass."""
        after_clean = rng_state(images.device)
        outputs = []
        try:
            for k in range(self.num_samples):
                _set_rng_state(images.device, generator_state)
                with masks.replaying(model) if masks is not None else contextlib.nullcontext():
                    outputs.append(_as_logits(functional_call(model, {name: w[k] for name, w in perturbed.items()}, (images,))))
        finally:
            _set_rng_state(images.device, after_clean)
        return torch.stack(outputs)

    def _sequential_logits(self, model: nn.Module, images: Tensor, perturbed: Dict[str, Tensor]) -> Tensor:
        return torch.stack([
            _as_logits(functional_call(model, {name: w[k] for name, w in perturbed.items()}, (images,)))
            for k in range(self.num_samples)
        ])

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
                "or leave clean_logits out (kn runs a dropout-free clean pass)",
                RuntimeWarning,
                stacklevel=4,
            )

    def __repr__(self) -> str:
        return (
            f"KernelNoise(eta={self.eta}, num_samples={self.num_samples}, seed={self.seed}, "
            f"granularity={self.granularity!r}, include={self.include!r}, chunk_size={self.chunk_size}, "
            f"batched={self.batched}, calls={self.calls})"
        )


# ---------------------------------------------------------------------------------------------------
# MC-Dropout


class MCDropout:
    """T stochastic forwards with dropout active and every other module in eval mode.

    Every ``_DropoutNd`` module (Dropout, Dropout1d/2d/3d, AlphaDropout, ...) is put in training mode
    and every other module (batch norm included: running statistics, never updated) in eval mode for
    the passes; each module's own flag is restored afterwards. The input is repeated along the batch
    so one forward covers ``chunk_size`` samples (None: all T).

    Call number c seeds the device's generator with ``seed + c`` inside ``torch.random.fork_rng``: the
    same seed, call index and ``chunk_size`` give identical samples, and the global RNG is untouched.

    Args:
        num_samples: T, the number of stochastic passes.
        seed: base seed of the dropout masks.
        chunk_size: samples per forward (None: all T in one forward of batch T * N).
    """

    def __init__(self, num_samples: int = 10, seed: int = 0, chunk_size: Optional[int] = None) -> None:
        _check_positive_int("num_samples", num_samples)
        _check_seed(seed)
        _check_positive_int("chunk_size", chunk_size, allow_none=True)
        self.num_samples = num_samples
        self.seed = seed
        self.chunk_size = chunk_size
        self.calls = 0

    def __call__(self, model: nn.Module, images: Tensor) -> Tensor:
        """Returns the T samples' logits ``(T, N, C, *spatial)``, without a graph."""
        _check_images(images)
        modes = {m: isinstance(m, _DropoutNd) for m in model.modules()}
        if not any(isinstance(m, _DropoutNd) and m.p > 0 for m in modes):
            raise ValueError(
                f"MCDropout needs a model with a dropout module (nn.Dropout, nn.Dropout2d, ...) with p > 0; "
                f"{type(model).__name__} has none"
            )
        batch, step = images.shape[0], self.chunk_size or self.num_samples
        chunks = []
        with torch.no_grad(), _module_modes(modes), _seeded_rng(images.device, self.seed + self.calls):
            for start in range(0, self.num_samples, step):
                count = min(step, self.num_samples - start)
                out = _as_logits(model(images.repeat(count, *([1] * (images.dim() - 1)))))
                if out.dim() < 2 or out.shape[0] != count * batch:
                    raise ValueError(
                        f"the model must return (N, C, *spatial) logits with N = {count * batch} for a batch of "
                        f"{count * batch}, got shape {tuple(out.shape)}"
                    )
                chunks.append(out.reshape(count, batch, *out.shape[1:]))
        self.calls += 1
        return torch.cat(chunks)

    def uncertainty(self, model: nn.Module, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns ``(mean probabilities (N, C, *spatial), std (N, *spatial))``.

        ``std = sqrt(mean_t ||p_t - mean_t p_t||^2)`` over classes: the form of kernel-noise sigma.
        """
        probabilities = self(model, images).softmax(dim=2)  # (T, N, C, *spatial)
        mean = probabilities.mean(dim=0)
        std = (probabilities - mean).pow(2).sum(dim=2).mean(dim=0).sqrt()
        return mean, std

    def state_dict(self) -> Dict[str, int]:
        """The call counter: with the same seed, a resumed run draws the same masks."""
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.calls = _load_calls(type(self).__name__, state)

    def __repr__(self) -> str:
        return (
            f"MCDropout(num_samples={self.num_samples}, seed={self.seed}, chunk_size={self.chunk_size}, "
            f"calls={self.calls})"
        )


class MCDropoutUncertainty:
    """MC-Dropout as an uncertainty source: ``(logits, std)`` with ``std`` from :meth:`MCDropout.uncertainty`.

    ``logits`` are ``clean_logits`` (detached) when given; otherwise the log of the mean probability,
    i.e. logits whose softmax is the MC predictive mean (``-inf`` where that mean underflows to 0).
    The scale is 1: ``std`` is a distance between probability vectors, at most sqrt(2).
    """

    uncertainty_scale = 1.0

    def __init__(self, num_samples: int = 10, seed: int = 0, chunk_size: Optional[int] = None) -> None:
        self.mc = MCDropout(num_samples=num_samples, seed=seed, chunk_size=chunk_size)

    def __call__(
        self, model: nn.Module, images: Tensor, clean_logits: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        if clean_logits is not None:
            clean_logits = _check_clean_logits(clean_logits, images)
        mean, std = self.mc.uncertainty(model, images)
        if clean_logits is None:
            return mean.log(), std
        if clean_logits.shape != mean.shape:
            raise ValueError(
                f"clean_logits must have the shape of the model's logits {tuple(mean.shape)}, "
                f"got {tuple(clean_logits.shape)}"
            )
        return clean_logits, std

    def state_dict(self) -> Dict[str, int]:
        return self.mc.state_dict()

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.mc.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------
# Entropy


class EntropyUncertainty:
    """The normalised softmax entropy ``H / log C`` in [0, 1] of the clean logits (scale 1).

    Without ``clean_logits`` it runs one forward like KernelNoise's clean pass: dropout off, batch
    norm as the model's mode says, no statistic updated.
    """

    uncertainty_scale = 1.0

    def __call__(
        self, model: nn.Module, images: Tensor, clean_logits: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        _check_images(images)
        dropout_off = {m: False for m in model.modules() if isinstance(m, _DropoutNd)}
        with torch.no_grad():
            if clean_logits is None:
                with frozen_batch_norm(model), _module_modes(dropout_off):
                    logits = _as_logits(model(images))
            else:
                logits = _check_clean_logits(clean_logits, images)
            return logits, pixel_entropy(logits, normalized=True)

    def state_dict(self) -> Dict[str, int]:
        return {}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        pass


def make_uncertainty(name: str, **options: object) -> UncertaintySource:
    """Builds the source called ``name`` (one of :data:`UNCERTAINTY_SOURCES`) with its options.

    ``"kernel_noise"`` -> :class:`KernelNoise`, ``"entropy"`` -> :class:`EntropyUncertainty` (no
    options), ``"mc_dropout"`` -> :class:`MCDropoutUncertainty`.
    """
    factories = {"kernel_noise": KernelNoise, "entropy": EntropyUncertainty, "mc_dropout": MCDropoutUncertainty}
    if name not in factories:
        raise ValueError(f"name must be one of {UNCERTAINTY_SOURCES}, got {name!r}")
    return factories[name](**options)  # type: ignore[arg-type]
