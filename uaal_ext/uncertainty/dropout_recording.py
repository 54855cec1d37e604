"""Recording the dropout masks of one forward, so later passes reuse them instead of drawing new ones.

KernelNoise's perturbed passes must see the clean forward's dropout masks (sigma measures the
weight perturbation alone). Replaying the random generator's state redraws every mask, and drawing
(``bernoulli_``) costs a sizeable share of a forward on the CPU (benchmarks/results/training_step_cpu.md);
multiplying by a recorded mask costs one pass over the activation, and the mask is already kept
alive by autograd for the backward of the training forward, so recording adds no memory there.

Recorded modules are those whose ``forward`` is ``nn.Dropout``'s (element-wise masks) or
``nn.Dropout1d/2d/3d``'s with batched input (one mask value per sample and channel). Their masks
come from a generator of their own, seeded from one draw of the CPU generator when recording starts,
so every other random op of the forward (``AlphaDropout``, functional dropout, drop path, ...) draws
from the global generators exactly as it would in a pass that replays their state: a caller that
restores :attr:`DropoutRecording.rng_state` before each replayed pass reproduces those too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .modes import patched

__all__ = ["DropoutRecording", "record_dropout", "rng_state", "set_rng_state"]

# The forwards whose masks are recorded, with the number of spatial dims of their batched input
# (None: element-wise masks, any shape). Matching the forward, not the class, leaves subclasses
# that redefine forward to the generator replay.
_RECORDED_FORWARDS: dict[Callable, int | None] = {
    nn.Dropout.forward: None,
    nn.Dropout1d.forward: 1,
    nn.Dropout2d.forward: 2,
    nn.Dropout3d.forward: 3,
}


def rng_state(device: torch.device | str) -> Tensor:
    """The state of the random generator dropout draws from on ``device`` (for ``dropout_state=``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def set_rng_state(device: torch.device | str, state: Tensor) -> None:
    """Restores the state :func:`rng_state` returned for ``device``'s dropout generator."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class DropoutRecording:
    """The dropout masks of one forward (see :func:`record_dropout`).

    Attributes:
        device: the device of the recorded forward's images.
        rng_state: the state of ``device``'s default generator right before the recorded forward
            ran; restoring it before a replayed pass reproduces the forward's other random ops.
        masks: ``{module: [mask or None, ...]}`` in call order; a mask is the tensor the module's
            input was multiplied by (0 or ``1 / (1 - p)``); None marks a call that drew from the
            global generator instead (eval mode, ``p = 0``, or an input layout that is not recorded).
    """

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.masks: dict[nn.Module, list[Tensor | None]] = {}
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.rng_state = rng_state(device)

    def __len__(self) -> int:
        """The number of masks recorded."""
        return sum(mask is not None for masks in self.masks.values() for mask in masks)

    def __repr__(self) -> str:
        return f"DropoutRecording(device={self.device}, modules={len(self.masks)}, masks={len(self)})"

    @contextlib.contextmanager
    def replaying(self, model: nn.Module) -> Iterator[None]:
        """Within, one forward of ``model`` multiplies by the recorded masks instead of drawing.

        Enter once per pass: every recorded module's calls take its masks in the recorded order.
        A module called more often than in the recorded forward, or with another input shape,
        raises RuntimeError.
        """
        used = {m: 0 for m in self.masks}

        def name(module: nn.Module) -> str:  # for error messages only: not walked on every pass
            return next((n for n, m in model.named_modules() if m is module), type(module).__name__)

        def replay(module: nn.Module, x: Tensor) -> Tensor:
            masks = self.masks[module]
            call = used[module]
            if call >= len(masks):
                raise RuntimeError(
                    f"dropout module {name(module)!r} ran {call + 1} times in a replayed "
                    f"pass but {len(masks)} times in the recorded forward"
                )
            used[module] = call + 1
            mask = masks[call]
            if mask is None:
                return type(module).forward(module, x)
            if x.dim() != mask.dim() or any(m not in (1, s) for m, s in zip(mask.shape, x.shape)):
                raise RuntimeError(
                    f"dropout module {name(module)!r} got input of shape "
                    f"{tuple(x.shape)} in a replayed pass, but its recorded mask has shape {tuple(mask.shape)}"
                )
            return x * mask

        with patched({m: (lambda x, m=m: replay(m, x)) for m in self.masks}, "forward"):
            yield

    def _record(self, module: nn.Module, spatial_dims: int | None, x: Tensor) -> Tensor:
        """The recording forward of ``module``: draws the mask from the recording's generator."""
        masks = self.masks.setdefault(module, [])
        batched = spatial_dims is None or x.dim() == spatial_dims + 2
        if not module.training or module.p == 0 or not batched:
            masks.append(None)
            return type(module).forward(module, x)
        keep = 1.0 - module.p
        shape = x.shape if spatial_dims is None else x.shape[:2] + (1,) * spatial_dims
        mask = torch.empty(shape, dtype=x.dtype, device=x.device)
        if keep == 0:
            mask.zero_()
        else:
            mask.bernoulli_(keep, generator=self._generator(x.device)).div_(keep)
        masks.append(mask)
        return x * mask

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]


@contextlib.contextmanager
def record_dropout(model: nn.Module, device: torch.device | str | None = None) -> Iterator[DropoutRecording]:
    """Records the dropout masks of the forward of ``model`` run inside the block.

    ``device``: where the images are (default: the device of the model's first parameter, else the
    CPU); the recording keeps that device generator's state from before the forward. The masks
    are drawn from a generator seeded by one draw of the CPU generator, so a seeded run repeats
    exactly. Run one forward per recording.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"record_dropout: model must be an nn.Module, got {type(model).__name__}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    recording = DropoutRecording(device, seed)
    recorded = {
        m: (lambda x, m=m: recording._record(m, _RECORDED_FORWARDS[type(m).forward], x))
        for m in model.modules()
        if type(m).forward in _RECORDED_FORWARDS
    }
    with patched(recorded, "forward"):
        yield recording
