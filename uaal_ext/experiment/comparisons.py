"""Paired comparisons of an experiment's runs, and what each selection method cost.

Cells are keyed ``(dataset, model, variant, method, mode, round, budget)`` and hold one value per
seed. Runs of one seed share the initial labeled set and the model initialisation, so a training
mode against standard training (same method, seed and budget) and a method against Random (same
mode, seed and budget) are paired comparisons (:func:`uaal_ext.experiment.stats.paired_difference`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .naming import MIOU, MODE_NAMES, Metric, column_name, dataset_title, method_title, percent, unique_in_order
from .stats import paired_difference

MISSING = "–"  # a cell without runs

__all__ = [
    "Cell",
    "paired_comparisons",
    "selection_costs",
    "paired_markdown",
    "costs_markdown",
    "BASELINE_MODE",
    "BASELINE_METHOD",
]

Cell = tuple[Any, ...]  # (dataset, model, variant, method, mode, round, budget)
BASELINE_MODE = "standard"
BASELINE_METHOD = "random"


def _pair(cell: Cell, method: str | None = None, mode: str | None = None) -> Cell:
    dataset, model, variant, own_method, own_mode, round_index, budget = cell
    return (dataset, model, variant, method or own_method, mode or own_mode, round_index, budget)


def paired_comparisons(cells: Mapping[Cell, Mapping[int, float]]) -> list[dict[str, Any]]:
    """Every mode against standard training and every method against Random, cell by cell.

    Returns rows with the cell's keys, ``comparison`` (``"uaal - standard"``, ``"entropy - random"``,
    ...), ``against`` (the baseline's mode or method), and the paired difference over the seeds both
    sides have: ``mean``, ``low``, ``high`` (95% t-interval), ``n`` and ``excludes_zero``. Round 0
    (the shared initial set) is compared across modes only: every method's round 0 is one model.
    """
    rows = []
    for cell, values in cells.items():
        dataset, model, variant, method, mode, round_index, budget = cell
        baselines = []
        if mode != BASELINE_MODE:
            baselines.append(("mode", _pair(cell, mode=BASELINE_MODE), f"{mode} - {BASELINE_MODE}"))
        if method != BASELINE_METHOD and round_index != 0:
            baselines.append(("method", _pair(cell, method=BASELINE_METHOD), f"{method} - {BASELINE_METHOD}"))
        for kind, partner, label in baselines:
            other = cells.get(partner)
            if other is None:
                continue
            seeds = sorted(set(values) & set(other))
            if not seeds:
                continue
            difference = paired_difference([values[s] - other[s] for s in seeds])
            rows.append({
                "dataset": dataset, "model": model, "variant": variant, "method": method, "mode": mode,
                "round": round_index, "budget": budget, "comparison": label, "kind": kind,
                "mean": difference.mean, "low": difference.low, "high": difference.high, "n": difference.n,
                "excludes_zero": difference.excludes_zero,
            })  # fmt: skip
    return rows


def selection_costs(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method, what its selections cost as measured in the runs: forward passes and milliseconds
    per pool image scored (means over every recorded selection). Methods never timed are left out."""
    totals: dict[str, list[float]] = {}
    for row in rows:
        if "select_ms_per_image" in row and row.get("round", 0) > 0:
            entry = totals.setdefault(row["method"], [0.0, 0.0, 0])
            entry[0] += row["select_ms_per_image"]
            entry[1] += row.get("select_forwards_per_image", 0.0)
            entry[2] += 1
    return [
        {"method": method, "ms_per_image": ms / n, "forwards_per_image": forwards / n, "selections": int(n)}
        for method, (ms, forwards, n) in totals.items()
    ]


def _signed(value: float, scale: float, digits: int) -> str:
    return f"{value * scale:+.{digits}f}"


def paired_markdown(comparisons: Sequence[dict[str, Any]], metric: Metric = MIOU, heading: str = "### ") -> str:
    """The paired differences of :func:`uaal_ext.experiment.comparisons.paired_comparisons` as one
    table per dataset, model and variant and per kind (modes against standard training, methods
    against Random): rows the comparisons, columns the budgets (round 0 included for modes), cells
    ``"+1.23 [-0.45, +2.91]"`` (mean and 95% t-interval over seeds), bold where the interval
    excludes 0."""
    blocks = []
    kinds = {"mode": "training modes against standard training (same method and seed)",
             "method": "methods against Random (same training mode and seed)"}  # fmt: skip
    for group in unique_in_order((r["dataset"], r["model"], r["variant"]) for r in comparisons):
        dataset, model, variant = group
        for kind, what in kinds.items():
            rows = [r for r in comparisons if (r["dataset"], r["model"], r["variant"]) == group and r["kind"] == kind]
            if not rows:
                continue
            columns = unique_in_order(sorted((r["round"], r["budget"]) for r in rows))
            header = ["Method", "Training", "Comparison"] + [
                f"B = {percent(b)}" + (" (initial)" if round_index == 0 else "") for round_index, b in columns
            ]
            by_cell = {(r["method"], r["mode"], r["comparison"], r["round"], r["budget"]): r for r in rows}
            table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for method, mode, comparison in unique_in_order((r["method"], r["mode"], r["comparison"]) for r in rows):
                cells = [method_title(method), MODE_NAMES.get(mode, mode), comparison]
                for column in columns:
                    r = by_cell.get((method, mode, comparison) + column)
                    if r is None:
                        cells.append(MISSING)
                        continue
                    text = _signed(r["mean"], metric.scale, metric.digits)
                    if r["n"] >= 2:
                        low, high = (_signed(r[k], metric.scale, metric.digits) for k in ("low", "high"))
                        text += f" [{low}, {high}]"
                    cells.append(f"**{text}**" if r["excludes_zero"] else text)
                table.append("| " + " | ".join(cells) + " |")
            counts = sorted({r["n"] for r in rows})
            seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
            title = f"{heading}{dataset_title(dataset)}, {column_name(model, variant)}: {what}"
            note = (f"Paired difference of the {metric.label}, mean [95% t-interval] over {seeds} seeds; "
                    f"bold: the interval excludes 0.")  # fmt: skip
            blocks.append(f"{title}\n\n" + "\n".join(table) + f"\n\n{note}\n")
    return "\n".join(blocks) if blocks else "No paired runs yet.\n"


def costs_markdown(costs: Sequence[dict[str, Any]]) -> str:
    """What each method's selections cost, as measured in the runs."""
    if not costs:
        return "No selection was timed.\n"
    lines = [
        "| Method | forward passes per pool image | ms per pool image (measured) | selections |",
        "|---|---|---|---|",
    ]
    for row in costs:
        lines.append(f"| {method_title(row['method'])} | {row['forwards_per_image']:.3g} | {row['ms_per_image']:.3g} | "
                     f"{row['selections']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
