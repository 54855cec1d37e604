"""Checks of the prediction tensors handed to the acquisition functions, naming the argument."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .base import AcquisitionMethod

__all__ = ["LAYOUTS", "check_tensor", "check_perturbed", "check_inputs", "valid_mask"]

LAYOUTS = {
    "logits": "(N, C, *spatial)",
    "clean_logits": "(N, C, *spatial)",
    "mc_logits": "(T, N, C, *spatial)",
    "perturbed_logits": "(K, N, C, *spatial)",
}


def check_tensor(name: str, value: object, min_dim: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor {LAYOUTS[name]}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be floating point {LAYOUTS[name]}, got dtype {value.dtype}")
    if value.dim() < min_dim or value.shape[min_dim - 1] == 0 or (min_dim == 3 and value.shape[0] == 0):
        raise ValueError(
            f"{name} must be {LAYOUTS[name]} with at least one class"
            f"{' and one sample' if min_dim == 3 else ''}, got shape {tuple(value.shape)}"
        )
    return value


def check_perturbed(perturbed: Tensor, clean: Tensor, clean_name: str) -> None:
    if perturbed.shape[1:] != clean.shape:
        raise ValueError(
            f"perturbed_logits must be (K, *{clean_name}.shape) = (K, {', '.join(map(str, clean.shape))}), "
            f"got shape {tuple(perturbed.shape)}"
        )
    if perturbed.dtype != clean.dtype:
        raise TypeError(f"perturbed_logits must have the dtype of {clean_name} ({clean.dtype}), got {perturbed.dtype}")
    if perturbed.device != clean.device:
        raise ValueError(f"perturbed_logits is on {perturbed.device} but {clean_name} on {clean.device}")


def _pixel_shape(name: str, value: Tensor) -> tuple[int, ...]:
    """The ``(N, *spatial)`` shape of the score map that ``value`` (an input named ``name``) gives."""
    if name == "logits":
        return (value.shape[0], *value.shape[2:])
    return (value.shape[1], *value.shape[3:])


def check_inputs(method: AcquisitionMethod, inputs: Mapping[str, Tensor | None]) -> tuple[int, ...]:
    """Checks that ``method`` gets exactly the tensors its passes produce; returns the pixel shape.

    A method that needs no pass (random) takes any one of them, only for N and the pixel shape.
    """
    given = [name for name, value in inputs.items() if value is not None]
    needed = method.passes.inputs
    if not needed:
        if not given:
            raise ValueError(
                f"method={method.name!r} needs one of logits=, mc_logits= or perturbed_logits= to know the "
                f"number of images N (and the pixel shape of an ignore mask)"
            )
    else:
        for name in needed:
            if inputs[name] is None:
                raise ValueError(f"method={method.name!r} needs {name}= {LAYOUTS[name]}; it is missing")
        for name in given:
            if name not in needed:
                raise ValueError(
                    f"{name} is not used by method={method.name!r}, which reads {', '.join(needed)}; leave {name} out"
                )
    shape: tuple[int, ...] | None = None
    first = ""
    for name in given:
        value = check_tensor(name, inputs[name], 2 if name == "logits" else 3)
        if name == "perturbed_logits" and inputs["logits"] is not None:
            check_perturbed(value, inputs["logits"], "logits")
        this = _pixel_shape(name, value)
        if shape is None:
            shape, first = this, name
        elif this != shape:
            raise ValueError(
                f"{name} gives score maps of shape {this} but {first} gives {shape}; they must describe the same images"
            )
    assert shape is not None
    return shape


def valid_mask(
    ignore_mask: Tensor | None,
    labels: Tensor | None,
    ignore_index: int | None,
    shape: tuple[int, ...],
    device: torch.device,
) -> Tensor | None:
    """``~ignore_mask`` (or ``labels != ignore_index``) after checking it, or None when all pixels count."""
    if labels is not None:
        if ignore_mask is not None:
            raise ValueError("give either ignore_mask or labels= with ignore_index=, not both")
        if ignore_index is None or isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"labels= needs ignore_index= (an int, e.g. 255), got ignore_index={ignore_index!r}")
        integer = isinstance(labels, Tensor) and not (labels.is_floating_point() or labels.is_complex())
        if not integer or labels.dtype == torch.bool:
            got = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an integer tensor (N, *spatial), got {got}")
        name, ignored = "labels", labels == ignore_index
    elif ignore_index is not None:
        raise ValueError("ignore_index= is only used with labels=; pass labels too, or an ignore_mask")
    elif ignore_mask is None:
        return None
    else:
        if not isinstance(ignore_mask, Tensor) or ignore_mask.dtype != torch.bool:
            got = f"dtype {ignore_mask.dtype}" if isinstance(ignore_mask, Tensor) else type(ignore_mask).__name__
            raise TypeError(f"ignore_mask must be a bool tensor (N, *spatial), True = ignored pixel; got {got}")
        name, ignored = "ignore_mask", ignore_mask
    if tuple(ignored.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the score map's shape (N, *spatial) = {tuple(shape)}, got {tuple(ignored.shape)}"
        )
    if ignored.device != device:
        raise ValueError(f"{name} is on {ignored.device} but the scores on {device}")
    return ~ignored
