"""The study's own figures, from the paired.csv files `uaal report` wrote (docs/study/results/).

    python docs/study/figures.py [RESULTS]    # default docs/study/results

- ``stage1/variants.png``: every UAAL training variant against standard training on the same seeds:
  the paired mIoU and entropy-AUROC differences with 95% intervals;
- ``stage2_3.png``: the active-learning paired differences (UAAL - standard, UAAL selector -
  standard, each method - Random) at 10% and 20%, choice seeds next to the fresh confirmation seeds.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _paired(path: Path, metric: str) -> dict[tuple[str, ...], tuple[float, float, float]]:
    scale = 100.0 if metric == "miou" else 1.0
    return {
        (row["variant"], row["method"], row["mode"], row["comparison"], row["budget"]): tuple(
            scale * float(row[key]) for key in ("mean", "low", "high")
        )
        for row in _rows(path)
        if row["metric"] == metric
    }


def stage1(results: Path) -> Path:
    """Two forest panels (mIoU, entropy AUROC): each variant's paired difference to standard training."""
    entries = []  # (label, miou (mean, low, high), auroc (mean, low, high))
    for folder, length in (("stage1", "150"), ("stage1_long", "600")):
        miou, auroc = (_paired(results / folder / "paired.csv", m) for m in ("miou", "entropy_auroc"))
        entries += [(f"{key[0]} ({length} steps)", miou[key], auroc[key]) for key in miou]
    entries.sort(key=lambda entry: entry[1][0])
    figure = Figure(figsize=(9.5, 0.28 * len(entries) + 1.4), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2, sharey=True)
    for panel, index, label in ((panels[0], 1, "mIoU (points)"), (panels[1], 2, "entropy AUROC")):
        for y, entry in enumerate(entries):
            mean, low, high = entry[index]
            color = "C3" if "600" in entry[0] else "C0"
            panel.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=color, capsize=2, markersize=4)
        panel.axvline(0, color="0.5", linewidth=0.8)
        panel.set_xlabel(f"UAAL - standard: {label}")
    panels[0].set_yticks(range(len(entries)), [entry[0] for entry in entries], fontsize=7)
    panels[0].set_xlim(left=max(panels[0].get_xlim()[0], -30))
    figure.suptitle("Stage 1: UAAL variants against standard training, mean and 95% interval over seeds 0-2")
    path = results / "stage1" / "variants.png"
    figure.savefig(path, dpi=130)
    return path


def stages_2_3(results: Path) -> Path:
    choice, fresh = (_paired(results / s / "paired.csv", "miou") for s in ("stage2", "stage3"))
    # Random under the UAAL selector is standard training by construction (Random asks no model):
    # its zero differences are left out.
    keys = [key for key in choice if key[4] in ("0.1", "0.2") and not (key[1] == "random" and key[2] == "uaal_select")]
    figure = Figure(figsize=(7.5, 0.32 * len(keys) + 1.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for position, key in enumerate(keys):
        for offset, (values, color, label) in enumerate(((choice, "C0", "seeds 0-2 (choice)"),
                                                         (fresh, "C3", "seeds 10-14 (confirmation)"))):  # fmt: skip
            if key not in values:
                continue
            mean, low, high = values[key]
            y = position + 0.18 * (offset - 0.5)
            axes.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=color, capsize=2,
                          label=label if position == 0 else None)  # fmt: skip
    modes = {"standard": "standard training", "uaal": "UAAL training", "uaal_select": "UAAL selector"}
    labels = [
        f"{k[3]}, {k[1]}, B = {float(k[4]):.0%}"
        if k[3].startswith(k[2])
        else f"{k[3]} ({modes[k[2]]}), B = {float(k[4]):.0%}"
        for k in keys
    ]
    axes.set_yticks(range(len(keys)), labels, fontsize=7)
    axes.axvline(0, color="0.5", linewidth=0.8)
    axes.invert_yaxis()
    axes.set_xlabel("paired mIoU difference (points), mean and 95% interval")
    axes.set_title("Stages 2 and 3: active learning")
    axes.legend(fontsize="small", loc="lower right")
    path = results / "stage2_3.png"
    figure.savefig(path, dpi=130)
    return path


if __name__ == "__main__":
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/study/results")
    print(stage1(results))
    if (results / "stage3" / "paired.csv").exists():
        print(stages_2_3(results))
