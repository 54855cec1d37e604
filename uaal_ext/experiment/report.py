"""Reports of active-learning experiments: tables like the paper's (mean +- std over seeds, best in
bold), CSV files and mIoU-vs-budget figures.

    experiments = load_experiments(["runs/sweep"])   # every folder with a state.json, at or below
    summary = summarize(experiments)                 # one row per (dataset, model, variant, method, mode, budget)
    print(markdown_tables(summary))
    write_report(["runs/sweep"], "runs/sweep/report")

Experiments whose configs differ (a sweep over ``exponent``, say) are told apart by a *variant*
label naming the keys that differ (``"exponent=2"``); dataset and model are separate dimensions of
every table and figure, so they never appear in the label. Experiments with the same label pool
their seeds.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .al import StateError, load_state
from .al.state import STATE_FILE
from .comparisons import Cell, costs_markdown, paired_comparisons, paired_markdown, selection_costs
from .naming import (
    MIOU,
    MODE_NAMES,
    Metric,
    column_name,
    dataset_title,
    method_title,
    model_title,
    percent,
    quality_metric,
    unique_in_order,
)

__all__ = [
    "MODE_NAMES",
    "method_title",
    "dataset_title",
    "model_title",
    "unique_in_order",
    "Experiment",
    "find_experiments",
    "load_experiments",
    "variant_labels",
    "summarize",
    "markdown_tables",
    "main_table",
    "paired_table",
    "write_report",
]

PathLike = Union[str, "os.PathLike[str]"]

# Config keys that never make experiments different variants: where and how fast they ran, which
# seeds (experiments with other seeds of the same config pool them), which methods and modes (rows
# of the tables), and dataset and model (columns and figures of their own).
_NOT_VARIANT_KEYS = frozenset(
    {"seeds", "device", "num_workers", "amp", "eval_batch_size", "root", "methods", "modes", "dataset", "model"}
)
_ROW_KEYS = (
    "dataset",
    "model",
    "method",
    "mode",
    "seed",
    "round",
    "budget",
    "num_labeled",
    "miou",
    "pixel_accuracy",
    "mean_class_accuracy",
)
_SUMMARY_COLUMNS = ("dataset", "model", "variant", "method", "mode", "round", "budget", "mean", "std", "n")
_MISSING = "–"


@dataclass
class Experiment:
    """One experiment folder as read from its state file."""

    path: str  # the folder holding state.json
    config: dict[str, Any]  # ExperimentConfig.to_dict() of the run
    rows: list[dict[str, Any]]  # the state's "results": one row per (seed, mode, method, round)
    finished: bool  # False while (or if) the run stopped before its last round
    wall_time: float | None = None  # seconds over all sessions, when the state records it


# ---------------------------------------------------------------------------------------------------
# Finding and reading experiments


def find_experiments(paths: Sequence[PathLike]) -> list[str]:
    """The experiment folders at or below ``paths``, sorted, each once.

    A path is an experiment folder (it holds ``state.json``) or a folder with experiments somewhere
    below it (a sweep); the search does not descend into an experiment folder (its checkpoints and
    report hold none). FileNotFoundError names a path that does not exist or holds no experiment.
    """
    found: dict[str, str] = {}  # real path -> the path as reported, so "out" and "out/" count once
    for path in paths:
        path = os.path.normpath(os.fspath(path))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path!r} does not exist")
        if os.path.isfile(path) and os.path.basename(path) == STATE_FILE:
            path = os.path.dirname(path) or "."  # the state file itself names its experiment
        folders = []
        for folder, subfolders, files in os.walk(path):
            if STATE_FILE in files:
                folders.append(folder)
                subfolders.clear()
        if not folders:
            raise FileNotFoundError(f"{path!r} holds no experiment (no {STATE_FILE} in it or in a folder below it)")
        for folder in folders:
            found.setdefault(os.path.realpath(folder), folder)
    return sorted(set(found.values()))


def load_experiments(paths: Sequence[PathLike]) -> list[Experiment]:
    """The experiments of :func:`find_experiments` (``paths``), read with :func:`uaal_ext.experiment.al.load_state`.

    A state file that cannot be read raises :class:`uaal_ext.experiment.al.StateError`; so does a result row
    without the keys a report needs.
    """
    experiments = []
    for folder in find_experiments(paths):
        state = load_state(folder)
        rows = state.results
        for index, row in enumerate(rows if isinstance(rows, list) else [None]):
            missing = [key for key in _ROW_KEYS if not isinstance(row, dict) or key not in row]
            if missing:
                raise StateError(f"result row {index} of {os.path.join(folder, STATE_FILE)!r} lacks {missing}")
        experiments.append(
            Experiment(
                path=folder,
                config=dict(state.config),
                rows=list(rows),
                finished=bool(state.finished),
                wall_time=float(state.wall_time),
            )
        )
    return experiments


# ---------------------------------------------------------------------------------------------------
# Variants


def _format_value(value: Any) -> str:
    """``2.0`` -> ``2``, ``0.005`` -> ``0.005``, ``[64, 128]`` -> ``[64,128]`` (no ", ": that separates keys)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(item) for item in value) + "]"
    return str(value)


def _sortable(value: Any) -> tuple[Any, ...]:
    """Numbers in numeric order (exponent 2 before 10), then everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, _format_value(value))


def _variant_keys(experiments: Sequence[Experiment]) -> list[str]:
    if not experiments:
        return []
    keys = sorted({key for experiment in experiments for key in experiment.config} - _NOT_VARIANT_KEYS)
    return [key for key in keys if any(e.config.get(key) != experiments[0].config.get(key) for e in experiments[1:])]


def variant_labels(experiments: Sequence[Experiment]) -> list[str]:
    """Each experiment's label: the config keys that set it apart, alphabetically, as
    ``"eta=0.005, exponent=2"``; empty for every experiment when none differ.

    A key is named where the experiment's value differs from the one most experiments share (a
    one-factor-at-a-time study labels each variant by its own change only), and always when every
    experiment has a value of its own (a sweep's axis). An experiment with nothing to name, among
    others that differ, is ``"base"``.
    """
    keys = _variant_keys(experiments)
    configs = unique_in_order(tuple(_format_value(e.config.get(key)) for key in keys) for e in experiments)
    shown = []
    for position in range(len(keys)):
        values = [config[position] for config in configs]
        counts = {value: values.count(value) for value in unique_in_order(values)}
        modal = max(counts, key=counts.__getitem__)  # the first seen of the most common
        shown.append(None if counts[modal] == 1 else modal)  # None: a sweep axis, always named
    labels = []
    for e in experiments:
        parts = []
        for key, modal in zip(keys, shown):
            value = _format_value(e.config.get(key))
            if value != modal:
                parts.append(f"{key}={value}")
        labels.append(", ".join(parts) or ("base" if keys else ""))
    return labels


def _variant_order(experiments: Sequence[Experiment]) -> list[str]:
    """The distinct labels, ordered by their keys' values (numerically where they are numbers)."""
    keys = _variant_keys(experiments)
    by_label = {
        label: tuple(_sortable(e.config.get(key)) for key in keys)
        for e, label in zip(experiments, variant_labels(experiments))
    }
    return sorted(by_label, key=by_label.__getitem__)


# ---------------------------------------------------------------------------------------------------
# Summary


def _orders(experiments: Sequence[Experiment]) -> dict[str, list[Any]]:
    """The order tables and figures list datasets, models, methods and modes in (first seen, and
    the configs' own order for methods and modes)."""
    rows = [row for e in experiments for row in e.rows]
    return {
        "dataset": unique_in_order(row["dataset"] for row in rows),
        "model": unique_in_order(row["model"] for row in rows),
        "method": unique_in_order([m for e in experiments for m in e.config.get("methods", ())] + [r["method"] for r in rows]),
        "mode": unique_in_order([m for e in experiments for m in e.config.get("modes", ())] + [r["mode"] for r in rows]),
    }  # fmt: skip


def seed_cells(experiments: Sequence[Experiment], metric: str = "miou") -> dict[Cell, dict[int, float]]:
    """``{(dataset, model, variant, method, mode, round, budget): {seed: value of metric}}`` in the
    order of :func:`summarize`; rows without ``metric`` (an older run, a source not evaluated) are
    left out. The same seed of the same cell in two experiments raises ValueError (a copied folder
    would count twice)."""
    labels = variant_labels(experiments)
    variant_rank = {label: rank for rank, label in enumerate(_variant_order(experiments))}
    orders = _orders(experiments)
    cells: dict[Cell, dict[int, float]] = {}
    seen_in: dict[tuple[Any, ...], str] = {}
    for experiment, label in zip(experiments, labels):
        for row in experiment.rows:
            cell = (row["dataset"], row["model"], label, row["method"], row["mode"], row["round"], row["budget"])
            if cell + (row["seed"],) in seen_in:
                raise ValueError(
                    f"seed {row['seed']} of {row['method']}/{row['mode']} round {row['round']} appears in both "
                    f"{seen_in[cell + (row['seed'],)]!r} and {experiment.path!r}; report each experiment once"
                )
            seen_in[cell + (row["seed"],)] = experiment.path
            value = row.get(metric)
            if value is None and metric.startswith("selector_"):
                value = row.get(metric.removeprefix("selector_"))  # the run's selector is its evaluated model
            if value is not None:
                cells.setdefault(cell, {})[row["seed"]] = float(value)

    def order(cell: Cell) -> tuple[Any, ...]:
        dataset, model, label, method, mode, round_index, budget = cell
        return (orders["dataset"].index(dataset), orders["model"].index(model), variant_rank[label],
                orders["method"].index(method), orders["mode"].index(mode), budget, round_index)  # fmt: skip

    return {cell: cells[cell] for cell in sorted(cells, key=order)}


def summarize(experiments: Sequence[Experiment], metric: str = "miou") -> list[dict[str, Any]]:
    """``metric`` (default mIoU, as a fraction) over seeds: one row per (dataset, model, variant,
    method, mode, budget), round 0 included, with ``mean``, ``std`` (sample std, ddof=1; 0.0 for
    one seed) and ``n`` (seeds). Rows are ordered by dataset and model (first seen), variant (by
    value), method and mode (as the configs list them), then budget."""
    summary = []
    for cell, by_seed in seed_cells(experiments, metric).items():
        values = np.asarray(list(by_seed.values()), dtype=np.float64)
        summary.append({
            **dict(zip(("dataset", "model", "variant", "method", "mode", "round", "budget"), cell)),
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values),
        })  # fmt: skip
    return summary


# ---------------------------------------------------------------------------------------------------
# Tables


def _cell_text(row: dict[str, Any], metric: Metric = MIOU) -> str:
    return f"{row['mean'] * metric.scale:.{metric.digits}f}±{row['std'] * metric.scale:.{metric.digits}f}"


def _seeds_note(counts: Iterable[int]) -> str:
    counts = sorted(set(counts))
    if not counts:
        return "no seeds"
    if len(counts) == 1:
        return f"{counts[0]} seed{'s' if counts[0] != 1 else ''}"
    return f"{counts[0]} to {counts[-1]} seeds (per cell: the n of summary.csv)"


def markdown_tables(summary: Sequence[dict[str, Any]], metric: Metric = MIOU, heading: str = "## ") -> str:
    """One Markdown table per dataset, shaped like the paper's Table 7.

    Rows: (method, training mode) in the order of ``summary`` (the configs' order), the method
    named on its first row only. Columns: budget x model x variant, ``"name (B = 10%)"``; round 0
    (the shared initial set) is left out unless it is all there is. Cells: the metric (mIoU in
    percent, ``"67.95±1.81"``); the best mean of each column in bold, ties (equal to the shown
    precision) all bold; ``–`` where a cell has no runs. The seeds count follows each table.
    """
    blocks = []
    for dataset in unique_in_order(row["dataset"] for row in summary):
        rows = [row for row in summary if row["dataset"] == dataset]
        trained = [row for row in rows if row["round"] != 0] or rows  # a training study has round 0 only
        budgets = sorted({row["budget"] for row in trained})
        columns = [
            (budget, model, variant)
            for budget in budgets
            for model, variant in unique_in_order((row["model"], row["variant"]) for row in trained)
            if any(r["budget"] == budget and r["model"] == model and r["variant"] == variant for r in trained)
        ]
        lines = unique_in_order((row["method"], row["mode"]) for row in rows)
        by_cell = {(row["method"], row["mode"], row["budget"], row["model"], row["variant"]): row for row in trained}

        # Best per column as shown: two means that print alike are a tie, both bold.
        best = {}
        for column in columns:
            shown = [
                round(row["mean"] * metric.scale, metric.digits)
                for (method, mode, *rest), row in by_cell.items()
                if tuple(rest) == column and not math.isnan(row["mean"])
            ]
            best[column] = max(shown) if shown else None

        header = ["Data selection method", "Training method"] + [
            f"{column_name(model, variant)} (B = {percent(budget)})" for budget, model, variant in columns
        ]
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        previous_method = None
        for method, mode in lines:
            cells = [method_title(method) if method != previous_method else "", MODE_NAMES.get(mode, mode)]
            previous_method = method
            for column in columns:
                row = by_cell.get((method, mode) + column)
                if row is None:
                    cells.append(_MISSING)
                elif best[column] is not None and round(row["mean"] * metric.scale, metric.digits) == best[column]:
                    cells.append(f"**{_cell_text(row, metric)}**")
                else:
                    cells.append(_cell_text(row, metric))
            table.append("| " + " | ".join(cells) + " |")

        initial = ", ".join(percent(b) for b in sorted({row["budget"] for row in rows if row["round"] == 0}))
        note = (
            f"{metric.label} on the validation split, mean ± std over {_seeds_note(row['n'] for row in trained)}; "
            f"best per column in bold."
        )
        if initial and any(row["round"] != 0 for row in trained):
            note += f" Every method starts from the same random {initial} of the pool (round 0, not shown)."
        blocks.append(f"{heading}{dataset_title(dataset)}\n\n" + "\n".join(table) + f"\n\n{note}\n")
    return "\n".join(blocks) if blocks else "No results yet.\n"


def main_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table for a terminal: method, mode, then mIoU (%) mean±std at every budget
    (round 0, the shared initial set, first), one block per dataset, model and variant."""
    blocks = []
    for group in unique_in_order((row["dataset"], row["model"], row["variant"]) for row in summary):
        rows = [row for row in summary if (row["dataset"], row["model"], row["variant"]) == group]
        dataset, model, variant = group
        budgets = unique_in_order(sorted((row["budget"], row["round"]) for row in rows))
        header = ["method", "mode"] + [percent(b) + (" (initial)" if r == 0 else "") for b, r in budgets]
        by_cell = {(row["method"], row["mode"], row["budget"], row["round"]): row for row in rows}
        table = [header]
        for method, mode in unique_in_order((row["method"], row["mode"]) for row in rows):
            cells = [by_cell.get((method, mode) + budget) for budget in budgets]
            table.append(
                [method_title(method), MODE_NAMES.get(mode, mode)]
                + [_cell_text(cell) if cell else _MISSING for cell in cells]
            )
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        title = (
            f"{dataset_title(dataset)} / {column_name(model, variant)}: mIoU (%), "
            f"mean±std over {_seeds_note(row['n'] for row in rows)}"
        )
        text = [title] + ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
        blocks.append("\n".join(text))
    return "\n\n".join(blocks) if blocks else "No results yet."


def paired_table(experiments: Sequence[Experiment]) -> str:
    """The paired mIoU differences (modes against standard training, methods against Random) as the
    report writes them: mean and 95% t-interval over seeds per method and budget."""
    return paired_markdown(paired_comparisons(seed_cells(experiments, MIOU.key)))


# ---------------------------------------------------------------------------------------------------
# Files


def _slug(text: str) -> str:
    """A file-name part: "eta=0.005, exponent=2" -> "eta=0.005_exponent=2"."""
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")


def _figure_name(dataset: str, model: str, variant: str, metric: Metric = MIOU) -> str:
    stem = "miou" if metric.key == "miou" else _slug(metric.key)
    parts = [f"{stem}_vs_budget", _slug(dataset), _slug(model)] + ([_slug(variant)] if variant else [])
    return "_".join(parts) + ".png"


def _plot(rows: Sequence[dict[str, Any]], title: str, path: str, metric: Metric = MIOU) -> None:
    """``metric`` against the labeled share of the pool (%), a line and a std band per (method, mode)."""
    # Agg canvas on a bare Figure: renders headless without switching the process-wide backend
    # (matplotlib.use would change it for a notebook that imports this), and pyplot never holds
    # the figure, so nothing stays open after saving.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = unique_in_order((row["method"], row["mode"]) for row in rows)
    figure = Figure(figsize=(6.4, 4.6 + 0.22 * ((len(lines) + 1) // 2)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    methods = unique_in_order(row["method"] for row in rows)
    modes = unique_in_order(row["mode"] for row in rows)
    styles = ["--", "-", ":", "-."]  # one per training mode, standard dashed
    for method, mode in lines:
        line = sorted((r for r in rows if (r["method"], r["mode"]) == (method, mode)), key=lambda r: r["budget"])
        x = np.array([row["budget"] * 100 for row in line])
        mean = np.array([row["mean"] * metric.scale for row in line])
        std = np.array([row["std"] * metric.scale for row in line])
        color = f"C{methods.index(method) % 10}"  # one colour per method, every mode
        axes.plot(x, mean, color=color, linestyle=styles[modes.index(mode) % len(styles)], marker="o", markersize=4,
                  label=f"{method_title(method)} ({MODE_NAMES.get(mode, mode)})")  # fmt: skip
        axes.fill_between(x, mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
    budgets = sorted({row["budget"] * 100 for row in rows})
    axes.set_xticks(budgets, [f"{b:g}" for b in budgets])  # the budgets themselves, not round numbers
    axes.set_xlabel("labeled fraction of the pool (%)")
    axes.set_ylabel(metric.label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    # Below the axes, where it covers no line and no band.
    figure.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    figure.savefig(path, dpi=120)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _progress(experiment: Experiment) -> str:
    """``"12 of 40 rounds evaluated"`` for an unfinished experiment (the count of its config)."""
    config = experiment.config
    try:
        total = len(config["seeds"]) * len(config["modes"]) * (1 + len(config["methods"]) * len(config["budgets"]))
    except (KeyError, TypeError):
        return f"{len(experiment.rows)} result rows so far"
    # Round 0 is one training per seed and mode, recorded once per method.
    done = len({(r["seed"], r["mode"], None if r["round"] == 0 else r["method"], r["round"]) for r in experiment.rows})
    return f"{done} of {total} rounds evaluated"


def _quality_metrics(experiments: Sequence[Experiment]) -> list[Metric]:
    """The uncertainty-quality columns the runs recorded (the evaluated model's, then a selector's)."""
    keys = unique_in_order(key for e in experiments for row in e.rows for key in row if key.endswith("_auroc"))
    return [
        quality_metric(key.removeprefix("selector_")[: -len("_auroc")], key.startswith("selector_")) for key in keys
    ]


def _write_csv(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)  # floats as repr: full precision


def write_report(paths: Sequence[PathLike], out_dir: PathLike) -> dict[str, str]:
    """Writes the report of the experiments at or below ``paths`` into ``out_dir``.

    Files: ``report.md`` (tables, paired differences, uncertainty quality, selection costs,
    figures, one line per experiment), ``summary.csv`` (:func:`summarize`'s rows for mIoU and
    every recorded quality metric, as fractions), ``paired.csv`` (every paired difference),
    ``runs.csv`` (every per-seed row with its experiment folder and variant) and
    ``<metric>_vs_budget_<dataset>_<model>[_<variant>].png`` per metric, dataset, model and variant.
    Returns ``{name: path}`` of what was written ("report", "summary", "paired", "runs", and each
    figure's file name without ``.png``).
    """
    experiments = load_experiments(paths)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    labels = variant_labels(experiments)
    metrics = [MIOU, *_quality_metrics(experiments)]
    summaries = {metric.key: summarize(experiments, metric.key) for metric in metrics}
    comparisons = {metric.key: paired_comparisons(seed_cells(experiments, metric.key)) for metric in metrics}
    written: dict[str, str] = {}

    written["summary"] = os.path.join(out_dir, "summary.csv")
    _write_csv(written["summary"], [{"metric": key, **row} for key, rows in summaries.items() for row in rows],
               ("metric",) + _SUMMARY_COLUMNS)  # fmt: skip
    written["paired"] = os.path.join(out_dir, "paired.csv")
    _write_csv(written["paired"], [{"metric": key, **row} for key, rows in comparisons.items() for row in rows],
               ("metric", "dataset", "model", "variant", "method", "mode", "round", "budget", "comparison", "mean",
                "low", "high", "n", "excludes_zero"))  # fmt: skip
    written["runs"] = os.path.join(out_dir, "runs.csv")
    all_rows = [
        {"experiment": e.path, "variant": label, **row} for e, label in zip(experiments, labels) for row in e.rows
    ]
    extra = unique_in_order(key for row in all_rows for key in row if key not in _ROW_KEYS)
    _write_csv(
        written["runs"],
        all_rows,
        ("experiment", "variant", *_ROW_KEYS, *[k for k in extra if k != "experiment" and k != "variant"]),
    )

    figures = []
    for metric in metrics:
        summary = summaries[metric.key]
        for group in unique_in_order((row["dataset"], row["model"], row["variant"]) for row in summary):
            dataset, model, variant = group
            name = _figure_name(dataset, model, variant, metric)
            title = f"{dataset_title(dataset)}, {column_name(model, variant)}"
            rows = [row for row in summary if (row["dataset"], row["model"], row["variant"]) == group]
            _plot(rows, title, os.path.join(out_dir, name), metric)
            written[name[: -len(".png")]] = os.path.join(out_dir, name)
            figures.append((metric, title, name))

    unfinished = sum(not e.finished for e in experiments)
    text = ["# Active-learning report", ""]
    count = f"{len(experiments)} experiment{'s' if len(experiments) != 1 else ''}"
    if unfinished:
        text += [f"{count}, **{unfinished} unfinished**: their cells hold the rounds evaluated so far.", ""]
    else:
        text += [f"{count}, all finished.", ""]
    text += [markdown_tables(summaries["miou"]), "## Paired differences", "", paired_markdown(comparisons["miou"])]
    for metric in metrics[1:]:
        text += [f"## {metric.label}", "", markdown_tables(summaries[metric.key], metric, heading="### ")]
        text += [paired_markdown(comparisons[metric.key], metric, heading="#### ")]
    text += ["## Selection cost", "", costs_markdown(selection_costs(all_rows))]
    text += ["## Figures", ""] + [f"![{metric.label}: {title}]({name})\n" for metric, title, name in figures]
    text += ["## Experiments", ""]
    for experiment, label in zip(experiments, labels):
        details = ["finished" if experiment.finished else f"unfinished ({_progress(experiment)})"]
        if experiment.wall_time is not None:
            details.append(f"wall time {_duration(experiment.wall_time)}")
        if label:
            details.append(label)
        text.append(f"- `{experiment.path}`: {', '.join(details)}")
    written["report"] = os.path.join(out_dir, "report.md")
    with open(written["report"], "w", encoding="utf-8") as file:
        file.write("\n".join(text) + "\n")
    return written
