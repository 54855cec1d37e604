"""Per-pixel uncertainty sources for UAAL training and for selection.

Every source is called the same way, ``source(model, images, clean_logits=None, *, dropout_masks=None)
-> (logits, uncertainty)``, carries the ``uncertainty_scale`` to give :class:`uaal_ext.UAALLoss`, and
says in class attributes what a training step must do for it (:class:`UncertaintySource`):

- :class:`KernelNoise` (``"kernel_noise"``): K forward passes with noisy conv/linear weights; the
  uncertainty is ``sigma``, the RMS deviation of the perturbed softmax from the clean one (scale eta).
- :class:`EntropyUncertainty` (``"entropy"``): the normalised softmax entropy of the clean logits.
- :class:`MCDropoutUncertainty` (``"mc_dropout"``): the spread of T MC-Dropout softmax samples, built
  on :class:`MCDropout`, which returns the samples themselves.

The training glue::

    with record_dropout(model) as masks:                      # only needed if the model has dropout
        out = model(x)                                        # (N, C, H, W), training forward
    _, sigma = kn(model, x, clean_logits=out.detach(), dropout_masks=masks)  # (N, H, W), no graph
    loss = uaal_ext.UAALLoss(uncertainty_scale=kn.eta)(out, y, uncertainty=sigma)
    loss.backward()

None of these builds an autograd graph, changes a parameter or a buffer, draws from (or reseeds) the
global random generators, or leaves a module's ``training`` flag changed.
"""

from .base import (
    UncertaintySource,
    make_uncertainty,
    register_uncertainty_source,
    uncertainty_source_class,
    uncertainty_source_names,
)
from .dropout_recording import DropoutRecording, record_dropout, rng_state, set_rng_state

# isort: off
# Each built-in source registers itself on import, in the order the registry lists them.
from .kernel_noise import MODULE_KINDS, KernelNoise
from .entropy import EntropyUncertainty
from .mc_dropout import MCDropout, MCDropoutUncertainty

# isort: on
from .modes import dropout_off, eval_mode, frozen_batch_norm, model_device, module_modes, seeded_rng

__all__ = [
    "UncertaintySource",
    "register_uncertainty_source",
    "uncertainty_source_names",
    "make_uncertainty",
    "uncertainty_source_class",
    "KernelNoise",
    "MODULE_KINDS",
    "MCDropout",
    "MCDropoutUncertainty",
    "EntropyUncertainty",
    "record_dropout",
    "DropoutRecording",
    "rng_state",
    "set_rng_state",
    "frozen_batch_norm",
    "module_modes",
    "eval_mode",
    "dropout_off",
    "seeded_rng",
    "model_device",
]
