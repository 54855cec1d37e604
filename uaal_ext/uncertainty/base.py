"""What every per-pixel uncertainty source is, and the registry that names them.

A source is called ``source(model, images, clean_logits=None, *, dropout_masks=None) -> (logits,
uncertainty)``, implements :meth:`UncertaintySource.measure`, and says, in class attributes, what the training step must do for it, so a training
loop never asks which concrete source it holds:

- ``uses_dropout_masks``: record the training forward's dropout masks (``record_dropout``) and pass
  the recording as ``dropout_masks`` (kernel noise: its passes replay the clean forward's masks);
- ``computed_in_loss``: the loss kernel computes this uncertainty from the logits it reads anyway,
  so the step passes ``uncertainty=None`` to the loss instead of calling the source (entropy).

``uncertainty_scale`` is the divisor the loss applies (``docs/math.md#uncertainty-weight``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from .._registry import Registry
from .dropout_recording import DropoutRecording

Pair = tuple[Tensor, Tensor]  # (logits (N, C, *spatial), uncertainty (N, *spatial))
Logits = Tensor | None  # clean logits (N, C, *spatial) already computed, or None
Masks = DropoutRecording | None  # the recorded dropout masks of the forward that gave them, or None


class UncertaintySource(abc.ABC):
    """Base class of the per-pixel uncertainty sources (see the module docstring).

    A subclass implements :meth:`measure`; calling the source checks the arguments and measures.
    """

    name: ClassVar[str] = ""  # the registry key, e.g. "kernel_noise"
    uses_dropout_masks: ClassVar[bool] = False  # wants the training forward's recorded dropout masks
    computed_in_loss: ClassVar[bool] = False  # the loss kernel computes it from the logits itself
    uncertainty_scale: float = 1.0  # u = U / uncertainty_scale in the loss

    def __call__(
        self, model: nn.Module, images: Tensor, clean_logits: Logits = None, *, dropout_masks: Masks = None
    ) -> Pair:
        """Returns ``(logits (N, C, *spatial), uncertainty (N, *spatial))``, neither with a graph.

        ``clean_logits``: the logits of a forward already run on ``images`` (detached here; a source
        may skip its own clean pass). ``dropout_masks``: that forward's recorded masks, for sources
        that replay them.
        """
        check_images(images)
        if clean_logits is not None:
            clean_logits = check_clean_logits(clean_logits, images)
        return self.measure(model, images, clean_logits, dropout_masks)

    @abc.abstractmethod
    def measure(self, model: nn.Module, images: Tensor, clean: Logits, masks: Masks) -> Pair:
        """The uncertainty of checked arguments (``clean``: detached logits or None)."""

    @classmethod
    def for_training(cls, *, eta: float, num_samples: int, seed: int) -> UncertaintySource:
        """The source a training config describes: each source takes the options it has (the
        kernel-noise size ``eta``, the number of passes ``num_samples``, the ``seed`` of its draws)."""
        return cls()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to draw the same randomness (empty for deterministic sources)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027  (deterministic sources keep none)
        """Restores :meth:`state_dict`."""


#: Every uncertainty source by name.
SOURCES: Registry[type[UncertaintySource]] = Registry("uncertainty source", "name")


def register_uncertainty_source(cls: type[UncertaintySource]) -> type[UncertaintySource]:
    """Adds ``cls`` to the sources :func:`make_uncertainty` and the training config know, under
    ``cls.name``; usable as a class decorator. A name registered twice raises ValueError."""
    if not (isinstance(cls, type) and issubclass(cls, UncertaintySource)):
        raise TypeError(f"register_uncertainty_source takes an UncertaintySource subclass, got {cls!r}")
    return SOURCES.add(cls.name, cls)


def uncertainty_source_names() -> tuple[str, ...]:
    """The registered sources, in registration order."""
    return SOURCES.names()


def uncertainty_source_class(name: object) -> type[UncertaintySource]:
    """The class registered as ``name``; ValueError listing the registered names otherwise."""
    return SOURCES.get(name)


def make_uncertainty(name: str, **options: Any) -> UncertaintySource:
    """Builds the source registered as ``name`` with its constructor options."""
    return uncertainty_source_class(name)(**options)


# ---- checks shared by the sources ---------------------------------------------------------------------


def as_logits(output: object) -> Tensor:
    """The model's output if it is a tensor, else TypeError saying what a model must return."""
    if not isinstance(output, Tensor):
        raise TypeError(f"the model must return a logits Tensor of shape (N, C, *spatial), got {type(output).__name__}")
    return output


def check_images(images: object) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() < 1:
        if isinstance(images, Tensor):
            got = f"{images.dtype} tensor of shape {tuple(images.shape)}"
        else:
            got = type(images).__name__
        raise TypeError(f"images must be a floating-point tensor (N, ...), got {got}")


def check_clean_logits(clean_logits: object, images: Tensor) -> Tensor:
    if not isinstance(clean_logits, Tensor):
        raise TypeError(f"clean_logits must be a Tensor or None, got {type(clean_logits).__name__}")
    if clean_logits.dim() < 2 or clean_logits.shape[0] != images.shape[0]:
        raise ValueError(
            f"clean_logits must be (N, C, *spatial) with N = images.shape[0] = {images.shape[0]}, "
            f"got shape {tuple(clean_logits.shape)}"
        )
    return clean_logits.detach()


def load_call_count(owner: str, state: Mapping[str, object]) -> int:
    """The ``calls`` counter of a saved source state, checked."""
    calls = state.get("calls") if isinstance(state, Mapping) else None
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
        raise ValueError(f"{owner}.load_state_dict: state must be {{'calls': int >= 0}}, got {state!r}")
    return calls
