"""MC-Dropout: T stochastic forwards with dropout active, as samples and as an uncertainty source."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from .._validation import check_int, check_seed
from .base import (
    Logits,
    Masks,
    Pair,
    UncertaintySource,
    as_logits,
    check_images,
    load_call_count,
    register_uncertainty_source,
)
from .modes import module_modes, seeded_rng

__all__ = ["MCDropout", "MCDropoutUncertainty"]


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

    def __init__(self, num_samples: int = 10, seed: int = 0, chunk_size: int | None = None) -> None:
        self.num_samples = check_int("num_samples", num_samples, low=1)
        self.seed = check_seed("seed", seed)
        self.chunk_size = check_int("chunk_size", chunk_size, low=1, allow_none=True)
        self.calls = 0

    def __call__(self, model: nn.Module, images: Tensor) -> Tensor:
        """Returns the T samples' logits ``(T, N, C, *spatial)``, without a graph."""
        check_images(images)
        modes = {m: isinstance(m, _DropoutNd) for m in model.modules()}
        if not any(isinstance(m, _DropoutNd) and m.p > 0 for m in modes):
            raise ValueError(
                f"MCDropout needs a model with a dropout module (nn.Dropout, nn.Dropout2d, ...) with p > 0; "
                f"{type(model).__name__} has none"
            )
        batch, step = images.shape[0], self.chunk_size or self.num_samples
        chunks = []
        with torch.no_grad(), module_modes(modes), seeded_rng(images.device, self.seed + self.calls):
            for start in range(0, self.num_samples, step):
                count = min(step, self.num_samples - start)
                out = as_logits(model(images.repeat(count, *([1] * (images.dim() - 1)))))
                if out.dim() < 2 or out.shape[0] != count * batch:
                    raise ValueError(
                        f"the model must return (N, C, *spatial) logits with N = {count * batch} for a batch of "
                        f"{count * batch}, got shape {tuple(out.shape)}"
                    )
                chunks.append(out.reshape(count, batch, *out.shape[1:]))
        self.calls += 1
        return torch.cat(chunks)

    def uncertainty(self, model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(mean probabilities (N, C, *spatial), std (N, *spatial))``.

        ``std = sqrt(mean_t ||p_t - mean_t p_t||^2)`` over classes: the form of kernel-noise sigma.
        """
        probabilities = self(model, images).softmax(dim=2)  # (T, N, C, *spatial)
        mean = probabilities.mean(dim=0)
        std = (probabilities - mean).pow(2).sum(dim=2).mean(dim=0).sqrt()
        return mean, std

    def state_dict(self) -> dict[str, int]:
        """The call counter: with the same seed, a resumed run draws the same masks."""
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.calls = load_call_count(type(self).__name__, state)

    def __repr__(self) -> str:
        return (
            f"MCDropout(num_samples={self.num_samples}, seed={self.seed}, chunk_size={self.chunk_size}, "
            f"calls={self.calls})"
        )


@register_uncertainty_source
class MCDropoutUncertainty(UncertaintySource):
    """MC-Dropout as an uncertainty source: ``(logits, std)`` with ``std`` from :meth:`MCDropout.uncertainty`.

    ``logits`` are ``clean_logits`` (detached) when given; otherwise the log of the mean probability,
    i.e. logits whose softmax is the MC predictive mean (``-inf`` where that mean underflows to 0).
    The scale is 1: ``std`` is a distance between probability vectors, at most sqrt(2). Its passes
    draw their own masks, so it has no use for the training forward's.
    """

    name: ClassVar[str] = "mc_dropout"
    uncertainty_scale = 1.0

    def __init__(self, num_samples: int = 10, seed: int = 0, chunk_size: int | None = None) -> None:
        self.mc = MCDropout(num_samples=num_samples, seed=seed, chunk_size=chunk_size)

    @classmethod
    def for_training(cls, *, eta: float, num_samples: int, seed: int) -> MCDropoutUncertainty:
        return cls(num_samples=num_samples, seed=seed)

    def measure(self, model: nn.Module, images: Tensor, clean: Logits, masks: Masks) -> Pair:
        mean, std = self.mc.uncertainty(model, images)
        if clean is None:
            return mean.log(), std
        if clean.shape != mean.shape:
            raise ValueError(
                f"clean_logits must have the shape of the model's logits {tuple(mean.shape)}, got {tuple(clean.shape)}"
            )
        return clean, std

    def state_dict(self) -> dict[str, int]:
        return self.mc.state_dict()

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.mc.load_state_dict(state)
