"""Uncertainty maps of validation images: standard vs UAAL training (the paper's supplementary Fig. 7).

For each selection method, the per-pixel map it ranks images by, from the model trained with
standard training (top row) and with UAAL training (bottom row)::

    maps = {(method, mode): uncertainty_map(model_of[method, mode], images, method) for ...}
    draw_uncertainty_maps(images, labels, maps, "figures/maps.png", class_names=SYNTHETIC_CLASSES)

or straight from an experiment folder (:func:`uaal_ext.experiment.al.run_experiment`)::

    experiment_maps("runs/demo", "runs/demo/maps.png", images=(0, 1))

The maps are what each acquisition method ranks by (its ``pixel_map`` of the passes it declares,
run by :class:`uaal_ext.acquisition.PassRunner` exactly as selection runs them); higher always means
more uncertain / more informative. Any registered method with a pixel map can be drawn.
"""

from __future__ import annotations

import colorsys
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_int
from ..acquisition import PassRunner, make_method, method_class, method_names
from ..uncertainty import eval_mode, model_device
from .al import AL_MODES, ExperimentConfig, ExperimentState, build_datasets, load_round_model, load_state, run_key
from .data import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from .report import MODE_NAMES, dataset_title, method_title, model_title, unique_in_order

__all__ = ["map_methods", "uncertainty_map", "draw_uncertainty_maps", "experiment_maps"]

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------------
# Maps


def map_methods() -> tuple[str, ...]:
    """The registered methods that have a per-pixel map (all built-in ones but "random")."""
    return tuple(name for name in method_names() if method_class(name).has_pixel_map)


def _map_label(method: str) -> str:
    try:
        return method_class(method).map_label
    except ValueError:  # a map drawn for a name this process has not registered
        return method


def _check_map_method(method: object) -> str:
    if not method_class(method).has_pixel_map:
        raise ValueError(
            f"method={method!r} has no uncertainty map: it scores whole images; choose one of {map_methods()}"
        )
    return method  # type: ignore[return-value]


def uncertainty_map(
    model: nn.Module,
    images: Tensor,
    method: str,
    *,
    num_samples: int | None = None,
    eta: float = 0.01,
    seed: int = 0,
    indices: Sequence[int] | None = None,
) -> Tensor:
    """The per-pixel map that selection ``method`` ranks by: ``(N, H, W)`` float32 on the CPU.

    The method's passes run as selection runs them (eval mode; MC-Dropout masks keyed by ``(seed,
    index)``; the K kernel-noise models of ``KernelNoise(eta, K, seed)``'s first call), so a map
    shows what selection saw for the same seed and pool index. ``indices`` name the images
    (default: 0..N-1). ``num_samples`` (T or K, default: the method's) is ignored by one-pass methods.

    The model runs under ``torch.no_grad``; every module's ``training`` flag is restored and no
    parameter or buffer changes. Images move to the model's device.

    Raises:
        ValueError: a method without a map ("random") or an unknown one (the message lists them).
    """
    chosen = make_method(_check_map_method(method), num_samples=num_samples, eta=eta, seed=seed)
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
        got = (
            f"{images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise TypeError(f"images must be a floating-point tensor (N, 3, H, W), got {got}")
    device = model_device(model)
    if device is not None:
        images = images.to(device)
    with eval_mode(model), torch.no_grad():
        predictions = PassRunner(model, chosen)(images, None if indices is None else list(indices))
        scores = chosen.pixel_map(predictions)
    if scores.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"the model must return logits at the images' resolution (N, C, H, W) = (N, C, {images.shape[2]}, "
            f"{images.shape[3]}); the {method!r} map has shape {tuple(scores.shape)}"
        )
    return scores.detach().to(device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# Drawing


def _palette(num_colors: int) -> np.ndarray:
    """A fixed categorical palette ``(num_colors, 3)`` in [0, 1]: tab10 / tab20 / tab20+b+c, then golden-ratio hues."""
    from matplotlib import colormaps

    if num_colors <= 10:
        base = list(colormaps["tab10"].colors)
    elif num_colors <= 20:
        base = list(colormaps["tab20"].colors)
    else:
        base = [c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
    colors = [tuple(c[:3]) for c in base[:num_colors]]
    for i in range(len(colors), num_colors):  # beyond 60 classes (ADE20K): distinct, reproducible hues
        hue = (i * 0.6180339887498949) % 1.0
        colors.append(colorsys.hsv_to_rgb(hue, 0.55 + 0.45 * ((i * 7) % 3) / 2, 0.95 - 0.3 * ((i * 5) % 2)))
    return np.asarray(colors, dtype=np.float64).reshape(num_colors, 3)


def _as_tensor(name: str, value: object) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    return value.detach().cpu()


def _display_image(image: Tensor) -> np.ndarray:
    """A normalised (3, H, W) image back to (H, W, 3) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    return (image.double() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def draw_uncertainty_maps(
    images: Tensor,
    labels: Tensor,
    maps: Mapping[tuple[str, str], Tensor],
    path: PathLike,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """One PNG comparing uncertainty maps of standard and UAAL training; returns ``path``.

    Layout: per image a block of rows, one per training mode present (``"standard"`` then
    ``"uaal"``); the first column holds the image (top) and its label map (below: a fixed categorical
    palette, ignored pixels (255) black), then one column per method (in the order the ``maps`` keys
    name them) with its map in the ``"inferno"`` colormap. Each method column has one colour scale,
    shared by all its maps (both modes, every image), so standard and UAAL read alike: from the
    column's lowest value to its 99.5th percentile (brighter = more uncertain); a colour bar under
    the column shows it. NaN pixels are grey; a missing ``(method, mode)`` cell says "n/a".

    Args:
        images: ``(N, 3, H, W)`` ImageNet-normalised images (as the datasets give them).
        labels: ``(N, H, W)`` integer class indices, 255 = ignored.
        maps: ``{(method, mode): (N, H, W) map}``.
        path: the PNG to write (parent folders are created).
        class_names: names of the classes, for a legend of those the labels show.
        title: the figure's title.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    images, labels = _as_tensor("images", images), _as_tensor("labels", labels)
    if not images.is_floating_point() or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a floating-point (N, 3, H, W) tensor with N >= 1, got "
            f"{images.dtype} of shape {tuple(images.shape)}"
        )
    n, _, height, width = images.shape
    if (
        labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
        or tuple(labels.shape) != (n, height, width)
    ):
        raise ValueError(
            f"labels must be an integer (N, H, W) = ({n}, {height}, {width}) tensor, got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    labels = labels.long()
    if bool((labels < 0).any()):
        raise ValueError(f"labels must be class indices >= 0 or {IGNORE_INDEX} (ignored), got {int(labels.min())}")
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError("maps must be a non-empty dict {(method, mode): (N, H, W) tensor}")
    checked: dict[tuple[str, str], np.ndarray] = {}
    for key, value in maps.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError(f"the keys of maps must be (method, mode) pairs of strings, got {key!r}")
        value = _as_tensor(f"maps[{key!r}]", value)
        if not value.is_floating_point() or tuple(value.shape) != (n, height, width):
            raise ValueError(
                f"maps[{key!r}] must be a floating-point (N, H, W) = ({n}, {height}, {width}) tensor, "
                f"got {value.dtype} of shape {tuple(value.shape)}"
            )
        checked[key] = value.double().numpy()
    methods = unique_in_order([method for method, _ in checked])
    present = unique_in_order([mode for _, mode in checked])
    modes = [m for m in AL_MODES if m in present] + [m for m in present if m not in AL_MODES]
    valid_labels = labels[labels != IGNORE_INDEX]
    num_classes = max(
        len(class_names) if class_names is not None else 0,
        int(valid_labels.max()) + 1 if valid_labels.numel() else 0,
        1,
    )
    colors = np.concatenate([_palette(num_classes), np.zeros((1, 3))])  # the last row: ignored pixels
    label_rgb = colors[torch.where(labels == IGNORE_INDEX, num_classes, labels).numpy()]

    # One colour scale per method, over all its maps: from the lowest finite value up to the 99.5th
    # percentile, so a few extreme pixels do not wash out the rest, and a weak model's maps (all near
    # log C, say) still show their structure; the colour bar gives the values.
    norms, clipped = {}, {}
    for method in methods:
        values = np.concatenate([checked[(method, mode)].ravel() for mode in modes if (method, mode) in checked])
        values = values[np.isfinite(values)]
        low = float(values.min()) if values.size else 0.0
        high = float(np.percentile(values, 99.5)) if values.size else 1.0
        high = high if high > low else low + max(abs(low), 1.0) * 1e-9
        norms[method] = Normalize(vmin=low, vmax=high)
        clipped[method] = bool(values.size and values.max() > high)
    cmap = colormaps["inferno"].with_extremes(bad="0.6")

    rows_per_block = max(2, len(modes))
    num_rows, num_cols = n * rows_per_block, 1 + len(methods)
    cell_w = 2.4
    cell_h = min(max(cell_w * height / width, 0.8), 3.2)
    figure = Figure(
        figsize=(cell_w * num_cols + 0.6, cell_h * num_rows + 1.2 + (0.4 if title else 0.0)), layout="constrained"
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, num_cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    columns: dict[str, list] = {method: [] for method in methods}
    mappables = {}
    for i in range(n):
        top = i * rows_per_block
        axes[top, 0].imshow(_display_image(images[i]), interpolation="nearest")
        axes[top, 0].set_ylabel("image")
        axes[top + 1, 0].imshow(label_rgb[i], interpolation="nearest")
        axes[top + 1, 0].set_ylabel("label")
        for extra in range(2, rows_per_block):
            axes[top + extra, 0].set_axis_off()
        for j, method in enumerate(methods, start=1):
            for r in range(rows_per_block):
                ax = axes[top + r, j]
                if r >= len(modes):
                    ax.set_axis_off()
                    continue
                mode = modes[r]
                columns[method].append(ax)
                if j == 1:
                    ax.set_ylabel(MODE_NAMES.get(mode, mode), fontweight="bold")
                if (method, mode) not in checked:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                    continue
                mappables[method] = ax.imshow(
                    np.ma.masked_invalid(checked[(method, mode)][i]),
                    cmap=cmap,
                    norm=norms[method],
                    interpolation="nearest",
                )
    axes[0, 0].set_title("image / label")
    for j, method in enumerate(methods, start=1):
        axes[0, j].set_title(method_title(method))
        if method in mappables:
            bar = figure.colorbar(
                mappables[method],
                ax=columns[method],
                location="bottom",
                shrink=0.8,
                aspect=25,
                pad=0.02,
                extend="max" if clipped[method] else "neither",
            )
            bar.ax.tick_params(labelsize="small")
            # What the colours measure, wrapped to the colour bar's width.
            bar.set_label(textwrap.fill(_map_label(method), 36, break_on_hyphens=False), fontsize="small")
    if class_names is not None:
        shown = sorted(int(c) for c in torch.unique(valid_labels).tolist())
        handles = [Patch(color=colors[c], label=class_names[c] if c < len(class_names) else str(c)) for c in shown]
        handles.append(Patch(color="black", label="ignored"))
        figure.legend(
            handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small", frameon=False
        )
    if title:
        figure.suptitle(title)
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------------------------------------------
# From an experiment folder


def _trained_round(state: ExperimentState, key: str, round_index: int) -> int | None:
    """The round ``load_round_model`` picks for run ``key`` (None if it has none)."""
    run = state.runs.get(key)
    rounds = [r.round for r in run.trained_rounds()] if run is not None else []
    if round_index >= 0:
        rounds = [r for r in rounds if r == round_index]
    return rounds[-1] if rounds else None


def experiment_maps(
    out_dir: PathLike,
    path: PathLike,
    *,
    images: Sequence[int] = (0, 1),
    seed: int | None = None,
    round_index: int = -1,
    methods: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> str:
    """Draws the uncertainty maps of validation images for every method and mode of an experiment.

    Loads the state of ``out_dir`` (:func:`uaal_ext.experiment.al.load_state`), its config and validation
    split; for each method (default: the experiment's methods except ``"random"``) and each training
    mode of the experiment, the model of round ``round_index`` (default: the last trained round) of
    seed ``seed`` (default: the config's first) maps the validation images ``images`` with
    :func:`uncertainty_map` (the experiment's ``eta`` and ``acquisition_samples``; the random draws
    keyed by the seed, the same for both modes), and :func:`draw_uncertainty_maps` writes ``path``.

    Raises:
        ValueError: a seed or method the experiment does not have (the message lists those it has),
            or an experiment whose only method is ``"random"``.
        IndexError: an image index outside the validation split (the message gives its size).
    """
    out_dir = os.fspath(out_dir)
    state = load_state(out_dir)
    config = ExperimentConfig.from_dict(state.config)
    available = [m for m in config.methods if method_class(m).has_pixel_map]
    if methods is None:
        if not available:
            raise ValueError(
                f"the experiment in {out_dir!r} only ran methods without an uncertainty map ({list(config.methods)})"
            )
        chosen = available
    else:
        chosen = [methods] if isinstance(methods, str) else list(methods)
        if not chosen:
            raise ValueError(f"methods must name at least one of the experiment's methods {available}")
        for method in chosen:
            if method not in available:
                has_map = method in method_names() and method_class(method).has_pixel_map
                why = "is not a method of the experiment" if has_map else "has no uncertainty map"
                raise ValueError(f"method {method!r} {why} in {out_dir!r}; the methods with maps are {available}")
    check_int("round_index", round_index, low=-1)  # -1: the last trained round
    if seed is None:
        seed = config.seeds[0]
    elif seed not in config.seeds:
        raise ValueError(f"seed {seed!r} is not a seed of the experiment in {out_dir!r}; it has {list(config.seeds)}")

    data = build_datasets(config)
    size = len(data.val)  # type: ignore[arg-type]
    indices = [images] if isinstance(images, int) else list(images)
    if not indices:
        raise ValueError("images must name at least one validation image index")
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"image indices must be ints, got {index!r}")
        if not 0 <= index < size:
            raise IndexError(
                f"validation image index {index} is out of range: the split has {size} images (indices 0 to {size - 1})"
            )
    items = [data.val[int(i)] for i in indices]
    batch = torch.stack([image for image, _ in items])
    labels = torch.stack([label for _, label in items])

    maps: dict[tuple[str, str], Tensor] = {}
    used_rounds = set()
    jobs = [(method, mode) for method in chosen for mode in config.modes]
    for method, mode in tqdm(jobs, desc="uncertainty maps", unit="model", disable=not progress, dynamic_ncols=True):
        model = load_round_model(out_dir, seed, mode, method, round_index, state=state, device=device)
        maps[(method, mode)] = uncertainty_map(
            model, batch, method, num_samples=config.acquisition_samples, eta=config.eta, seed=seed, indices=indices
        )
        used_rounds.add(_trained_round(state, run_key(seed, mode, None if round_index == 0 else method), round_index))
        del model

    dataset = dataset_title(config.dataset)
    model_name = model_title(config.model)
    if len(used_rounds) == 1 and None not in used_rounds:
        (r,) = used_rounds
        budget = config.initial_fraction if r == 0 else config.budgets[r - 1]
        when = f"round {r} ({budget:.0%} labeled)"
    else:
        when = "last trained rounds"
    shown = ", ".join(str(int(i)) for i in indices)
    title = f"{dataset}, {model_name}, seed {seed}, {when}: validation image{'s' if len(indices) > 1 else ''} {shown}"
    return draw_uncertainty_maps(batch, labels, maps, path, class_names=data.class_names, title=title)
