"""What every per-pixel uncertainty source is, and the registry that names them.

A source is called ``source(model, images, clean_logits=None, *, dropout_masks=None) -> (logits,
uncertainty)`` and says, in class attributes, what the training step must do for it, so a training
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
from typing import Any, ClassVar, Optional

from torch import Tensor, nn

from .dropout_recording import DropoutRecording

__all__ = [
    "UncertaintySource",
    "register_uncertainty_source",
    "uncertainty_source_names",
    "make_uncertainty",
    "uncertainty_source_class",
    "as_logits",
    "check_images",
    "check_clean_logits",
    "load_call_count",
]


class UncertaintySource(abc.ABC):
    """Base class of the per-pixel uncertainty sources (see the module docstring)."""

    name: ClassVar[str] = ""                    # the registry key, e.g. "kernel_noise"
    uses_dropout_masks: ClassVar[bool] = False  # wants the training forward's recorded dropout masks
    computed_in_loss: ClassVar[bool] = False    # the loss kernel computes it from the logits itself
    uncertainty_scale: float = 1.0              # u = U / uncertainty_scale in the loss

    @abc.abstractmethod
    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        clean_logits: Optional[Tensor] = None,
        *,
        dropout_masks: Optional[DropoutRecording] = None,
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(logits (N, C, *spatial), uncertainty (N, *spatial))``, neither with a graph."""

    @classmethod
    def for_training(cls, *, eta: float, num_samples: int, seed: int) -> "UncertaintySource":
        """The source a training config describes: each source takes the options it has (the
        kernel-noise size ``eta``, the number of passes ``num_samples``, the ``seed`` of its draws)."""
        return cls()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to draw the same randomness (empty for deterministic sources)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`."""


_SOURCES: dict[str, type[UncertaintySource]] = {}


def register_uncertainty_source(cls: type[UncertaintySource]) -> type[UncertaintySource]:
    """Adds ``cls`` to the sources :func:`make_uncertainty` and the training config know, under
    ``cls.name``; usable as a class decorator. A name registered twice raises ValueError."""
    if not (isinstance(cls, type) and issubclass(cls, UncertaintySource)):
        raise TypeError(f"register_uncertainty_source takes an UncertaintySource subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name.isidentifier():
        raise ValueError(f"{cls.__name__}.name must be an identifier such as 'kernel_noise', got {cls.name!r}")
    if cls.name in _SOURCES and _SOURCES[cls.name] is not cls:
        raise ValueError(f"an uncertainty source named {cls.name!r} is registered already ({_SOURCES[cls.name]})")
    _SOURCES[cls.name] = cls
    return cls


def uncertainty_source_names() -> tuple[str, ...]:
    """The registered sources, in registration order."""
    return tuple(_SOURCES)


def uncertainty_source_class(name: object) -> type[UncertaintySource]:
    """The class registered as ``name``; ValueError listing the registered names otherwise."""
    if not isinstance(name, str) or name not in _SOURCES:
        raise ValueError(f"name must be one of {uncertainty_source_names()}, got {name!r}")
    return _SOURCES[name]


def make_uncertainty(name: str, **options: Any) -> UncertaintySource:
    """Builds the source registered as ``name`` with its constructor options."""
    return uncertainty_source_class(name)(**options)


# ---- checks shared by the sources ---------------------------------------------------------------------


def as_logits(output: object) -> Tensor:
    """The model's output if it is a tensor, else TypeError saying what a model must return."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model must return a logits Tensor of shape (N, C, *spatial), got {type(output).__name__}"
        )
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
