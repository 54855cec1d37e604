"""uaal_ext.experiment.report: tables, CSV files and figures of experiment folders, against numbers computed here
with numpy from the rows written into hand-made state files."""

import csv
import json
import os
import re

import numpy as np
import pytest

from uaal_ext.experiment import report
from uaal_ext.experiment.al import ExperimentConfig, StateError
from uaal_ext.experiment.al.state import STATE_FORMAT  # the format load_state accepts

METHODS = ("random", "entropy", "mc_entropy")
MODES = ("standard", "uaal")
BUDGETS = (0.1, 0.2)
INITIAL = 0.05


def _row(config, method, mode, seed, round_index, miou):
    budget = INITIAL if round_index == 0 else BUDGETS[round_index - 1]
    return {
        "dataset": config.dataset,
        "model": config.model,
        "method": method,
        "mode": mode,
        "seed": seed,
        "round": round_index,
        "budget": budget,
        "num_labeled": round(budget * 400),
        "miou": miou,
        "pixel_accuracy": min(1.0, miou + 0.2),
        "mean_class_accuracy": min(1.0, miou + 0.1),
    }


def _write_experiment(folder, rng, seeds=(0, 1, 2), finished=True, last_round=None, **overrides):
    """A state.json in `folder` with random mIoUs for every (seed, mode, method, round <= last_round)
    the way run_experiment records them (round 0 once per seed and mode, repeated for every method).
    Returns the rows."""
    last_round = len(BUDGETS) if last_round is None else last_round
    config = ExperimentConfig(
        methods=METHODS, modes=MODES, budgets=BUDGETS, initial_fraction=INITIAL, seeds=seeds, **overrides
    )
    rows = []
    for seed in seeds:
        for mode in MODES:
            initial = float(rng.uniform(0.1, 0.3))
            rows += [_row(config, method, mode, seed, 0, initial) for method in METHODS]
            for method in METHODS:
                rows += [
                    _row(config, method, mode, seed, r, float(rng.uniform(0.3, 0.8))) for r in range(1, last_round + 1)
                ]
    state = {
        "format": STATE_FORMAT,
        "config": config.to_dict(),
        "pool_size": 400,
        "budget_sizes": [20, 40, 80],
        "initial": {},
        "runs": {},
        "results": rows,
        "finished": finished,
        "wall_time": 95.0,
    }
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "state.json"), "w") as file:
        json.dump(state, file)
    return rows


def _expected(rows, method, mode, budget):
    values = np.array([r["miou"] for r in rows if (r["method"], r["mode"], r["budget"]) == (method, mode, budget)])
    return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0, len(values)


def _cell(mean, std):
    return f"{mean * 100:.2f}±{std * 100:.2f}"


def _tables(markdown):
    """{dataset heading: (header cells, body rows of cells)} of the Markdown text."""
    tables, heading = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if heading not in tables:
                tables[heading] = (cells, [])
            else:
                tables[heading][1].append(cells)
    return tables


def _body_keys(body):
    """The (method, mode) display names of the rows, the blank method cells filled from above."""
    keys, method = [], None
    for cells in body:
        method = cells[0] or method
        keys.append((method, cells[1]))
    return keys


# ---------------------------------------------------------------------------------------------------
# Summary and tables


def test_summary_matches_numpy(tmp_path, seed):
    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed))
    summary = report.summarize(report.load_experiments([tmp_path / "exp"]))
    assert len(summary) == len(METHODS) * len(MODES) * (1 + len(BUDGETS))
    for method in METHODS:
        for mode in MODES:
            for budget in (INITIAL,) + BUDGETS:
                [line] = [s for s in summary if (s["method"], s["mode"], s["budget"]) == (method, mode, budget)]
                mean, std, n = _expected(rows, method, mode, budget)
                assert (line["dataset"], line["model"], line["variant"]) == ("synthetic", "small", "")
                assert line["n"] == n == 3
                assert line["mean"] == pytest.approx(mean, rel=1e-12)
                assert line["std"] == pytest.approx(std, rel=1e-12)
    # Order: methods and modes as configured, budgets rising.
    assert [(s["method"], s["mode"]) for s in summary[:: 1 + len(BUDGETS)]] == [(m, o) for m in METHODS for o in MODES]
    assert [s["budget"] for s in summary[: 1 + len(BUDGETS)]] == [INITIAL, *BUDGETS]


def test_markdown_cells_and_bold_column_max(tmp_path, seed):
    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed))
    markdown = report.markdown_tables(report.summarize(report.load_experiments([tmp_path / "exp"])))
    header, body = _tables(markdown)["Synthetic"]
    assert header == ["Data selection method", "Training method", "small (B = 10%)", "small (B = 20%)"]
    assert "mean ± std over 3 seeds" in markdown
    # The method is named on its first row only, as in the paper.
    assert [cells[0] for cells in body] == ["Random", "", "Entropy", "", "MC-Dropout", ""]
    keys = _body_keys(body)
    assert keys == [(report.method_title(m), report.MODE_NAMES[o]) for m in METHODS for o in MODES]
    for column, budget in enumerate(BUDGETS, start=2):
        means = {}
        for (method, mode), cells in zip([(m, o) for m in METHODS for o in MODES], body):
            mean, std, _ = _expected(rows, method, mode, budget)
            means[(method, mode)] = mean
            assert cells[column].strip("*") == _cell(mean, std)
        best = max(means, key=means.get)
        bold = [key for key, cells in zip(means, body) if cells[column].startswith("**")]
        assert bold == [best]


def test_ties_are_all_bold_and_one_seed_has_zero_std(tmp_path, seed):
    _write_experiment(tmp_path / "exp", np.random.default_rng(seed), seeds=(7,))
    state_path = tmp_path / "exp" / "state.json"
    state = json.loads(state_path.read_text())
    for row in state["results"]:  # entropy and MC-Dropout tie for the best standard 10% cell
        if row["round"] == 1:
            row["miou"] = 0.9 if (row["method"] in ("entropy", "mc_entropy") and row["mode"] == "standard") else 0.5
    state_path.write_text(json.dumps(state))
    summary = report.summarize(report.load_experiments([tmp_path / "exp"]))
    assert all(s["n"] == 1 and s["std"] == 0.0 for s in summary)
    markdown = report.markdown_tables(summary)
    _, body = _tables(markdown)["Synthetic"]
    assert [cells[2] for cells in body] == [
        "50.00±0.00",
        "50.00±0.00",
        "**90.00±0.00**",
        "50.00±0.00",
        "**90.00±0.00**",
        "50.00±0.00",
    ]
    assert "mean ± std over 1 seed;" in markdown


def test_main_table_lists_every_budget(tmp_path, seed):
    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed), seeds=(0, 1))
    text = report.main_table(report.summarize(report.load_experiments([tmp_path / "exp"])))
    lines = text.splitlines()
    assert "Synthetic / small" in lines[0] and "2 seeds" in lines[0]
    assert lines[1].split() == ["method", "mode", "5%", "(initial)", "10%", "20%"]
    noise = [line for line in lines if line.startswith("MC-Dropout") and " UAAL " in line]
    assert len(noise) == 1
    expected = [_cell(*_expected(rows, "mc_entropy", "uaal", b)[:2]) for b in (INITIAL,) + BUDGETS]
    assert noise[0].split()[2:] == expected


# ---------------------------------------------------------------------------------------------------
# Files


def test_write_report_files(tmp_path, seed):
    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed), seeds=(0, 1))
    written = report.write_report([tmp_path / "exp"], tmp_path / "out")
    assert set(written) == {"report", "summary", "paired", "runs", "miou_vs_budget_synthetic_small"}

    with open(written["summary"], newline="") as file:
        summary = list(csv.DictReader(file))
    assert len(summary) == len(METHODS) * len(MODES) * (1 + len(BUDGETS))
    assert {line["metric"] for line in summary} == {"miou"}
    for line in summary:
        mean, std, n = _expected(rows, line["method"], line["mode"], float(line["budget"]))
        assert float(line["mean"]) == pytest.approx(mean, rel=1e-12)  # fractions, full precision
        assert float(line["std"]) == pytest.approx(std, rel=1e-12)
        assert int(line["n"]) == n == 2

    with open(written["runs"], newline="") as file:
        runs = list(csv.DictReader(file))
    assert len(runs) == len(rows)
    assert sorted(float(r["miou"]) for r in runs) == sorted(r["miou"] for r in rows)
    assert {r["experiment"] for r in runs} == {str(tmp_path / "exp")}

    png = written["miou_vs_budget_synthetic_small"]
    with open(png, "rb") as file:
        assert file.read(4) == b"\x89PNG"
    text = open(written["report"], encoding="utf-8").read()
    assert "](miou_vs_budget_synthetic_small.png)" in text  # relative to report.md
    assert f"`{tmp_path / 'exp'}`: finished, wall time 95 s" in text
    assert "unfinished" not in text
    assert _cell(*_expected(rows, "entropy", "uaal", 0.2)[:2]) in text


def test_unfinished_experiment_is_marked_and_reports_its_rows(tmp_path, seed):
    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed), seeds=(0, 1), finished=False, last_round=1)
    written = report.write_report([tmp_path / "exp"], tmp_path / "out")
    text = open(written["report"], encoding="utf-8").read()
    # 2 seeds x 2 modes x (round 0 + 3 methods x round 1) of 2 x 2 x (1 + 3 x 2)
    assert "`: unfinished (16 of 28 rounds evaluated)" in text
    header, body = _tables(text)["Synthetic"]
    assert header[2:] == ["small (B = 10%)"]  # no 20% column: no run reached it
    assert body[0][2].strip("*") == _cell(*_expected(rows, "random", "standard", 0.1)[:2])


def test_missing_cells_show_a_dash(tmp_path, seed):
    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed), seeds=(0, 1), finished=False)
    state_path = tmp_path / "exp" / "state.json"
    state = json.loads(state_path.read_text())
    state["results"] = [r for r in rows if not (r["method"] == "entropy" and r["mode"] == "uaal" and r["round"] == 2)]
    state_path.write_text(json.dumps(state))
    _, body = _tables(report.markdown_tables(report.summarize(report.load_experiments([tmp_path / "exp"]))))[
        "Synthetic"
    ]
    assert body[3][:2] == ["", "UAAL"] and body[3][3] == "–" and body[3][2] != "–"


# ---------------------------------------------------------------------------------------------------
# Variants and folders


def test_exponent_variants_get_labels_and_columns(tmp_path, seed):
    rng = np.random.default_rng(seed)
    rows = {
        e: _write_experiment(tmp_path / "sweep" / f"exponent={e}", rng, seeds=(0, 1), exponent=float(e)) for e in (2, 1)
    }
    experiments = report.load_experiments([tmp_path / "sweep"])
    assert report.variant_labels(experiments) == ["exponent=1", "exponent=2"]
    summary = report.summarize(experiments)
    assert [s["variant"] for s in summary[:: len(summary) // 2]] == ["exponent=1", "exponent=2"]

    written = report.write_report([tmp_path / "sweep"], tmp_path / "out")
    for e in (1, 2):
        with open(written[f"miou_vs_budget_synthetic_small_exponent={e}"], "rb") as file:
            assert file.read(4) == b"\x89PNG"
    header, body = _tables(open(written["report"], encoding="utf-8").read())["Synthetic"]
    assert header[2:] == [
        "small, exponent=1 (B = 10%)",
        "small, exponent=2 (B = 10%)",
        "small, exponent=1 (B = 20%)",
        "small, exponent=2 (B = 20%)",
    ]
    for column, (budget, e) in enumerate([(0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2)], start=2):
        assert body[2][column].strip("*") == _cell(*_expected(rows[e], "entropy", "standard", budget)[:2])
    with open(written["runs"], newline="") as file:
        labels = {(os.path.basename(r["experiment"]), r["variant"]) for r in csv.DictReader(file)}
    assert labels == {("exponent=1", "exponent=1"), ("exponent=2", "exponent=2")}


def test_two_differing_keys_make_one_label(tmp_path, seed):
    rng = np.random.default_rng(seed)
    _write_experiment(tmp_path / "a", rng, eta=0.005, exponent=2.0, device="cuda")
    _write_experiment(tmp_path / "b", rng, eta=0.01, exponent=3.0, device="cpu")  # device: not a variant
    labels = report.variant_labels(report.load_experiments([tmp_path / "a", tmp_path / "b"]))
    assert labels == ["eta=0.005, exponent=2", "eta=0.01, exponent=3"]
    one = report.load_experiments([tmp_path / "a"])
    assert report.variant_labels(one) == [""]


def test_same_config_other_seeds_pool_and_duplicates_refused(tmp_path, seed):
    rng = np.random.default_rng(seed)
    rows = _write_experiment(tmp_path / "a", rng, seeds=(0, 1)) + _write_experiment(tmp_path / "b", rng, seeds=(2,))
    summary = report.summarize(report.load_experiments([tmp_path]))
    [line] = [s for s in summary if (s["method"], s["mode"], s["budget"]) == ("entropy", "uaal", 0.2)]
    mean, std, n = _expected(rows, "entropy", "uaal", 0.2)
    assert line["variant"] == "" and line["n"] == n == 3
    assert (line["mean"], line["std"]) == (pytest.approx(mean), pytest.approx(std))

    _write_experiment(tmp_path / "copy", rng, seeds=(2,))
    with pytest.raises(ValueError, match=r"seed 2 .* both .*b'.*copy'"):
        report.summarize(report.load_experiments([tmp_path]))


def test_nested_sweep_found_from_its_parent(tmp_path, seed):
    rng = np.random.default_rng(seed)
    for e in (1, 2):
        _write_experiment(tmp_path / "out" / f"exponent={e}", rng, exponent=float(e))
    os.makedirs(tmp_path / "out" / "exponent=1" / "checkpoints" / "seed=0")  # never searched
    (tmp_path / "out" / "exponent=1" / "checkpoints" / "seed=0" / "state.json").write_text("not a state")
    expected = [str(tmp_path / "out" / "exponent=1"), str(tmp_path / "out" / "exponent=2")]
    assert report.find_experiments([tmp_path / "out"]) == expected
    # Named twice, directly and through its parent (with a trailing slash): listed once.
    assert report.find_experiments([str(tmp_path / "out" / "exponent=2") + "/", tmp_path / "out"]) == expected


def test_missing_or_empty_path_raises_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        report.find_experiments([tmp_path / "no_such_folder"])
    os.makedirs(tmp_path / "empty" / "sub")
    with pytest.raises(FileNotFoundError, match="empty.* holds no experiment"):
        report.write_report([tmp_path / "empty"], tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_corrupt_state_raises_state_error(tmp_path, seed):
    _write_experiment(tmp_path / "good", np.random.default_rng(seed))
    os.makedirs(tmp_path / "bad")
    (tmp_path / "bad" / "state.json").write_text('{"format": 1, "config": {')
    with pytest.raises(StateError, match=re.escape(str(tmp_path / "bad" / "state.json"))):
        report.write_report([tmp_path], tmp_path / "out")
    state = json.loads((tmp_path / "good" / "state.json").read_text())
    del state["results"][4]["miou"]
    (tmp_path / "bad" / "state.json").write_text(json.dumps(state))
    with pytest.raises(StateError, match=r"row 4 .*\['miou'\]"):
        report.load_experiments([tmp_path / "bad"])


# ---------------------------------------------------------------------------------------------------
# Paired differences, uncertainty quality, selection cost


def test_paired_differences_match_a_hand_computation(tmp_path, seed):
    import scipy.stats

    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed), seeds=(0, 1, 2, 3))
    written = report.write_report([tmp_path / "exp"], tmp_path / "out")
    with open(written["paired"], newline="") as file:
        paired = {(r["comparison"], r["method"], r["mode"], float(r["budget"])): r for r in csv.DictReader(file)}

    def value(method, mode, budget, seed):
        (row,) = [r for r in rows if (r["method"], r["mode"], r["budget"], r["seed"]) == (method, mode, budget, seed)
                  and r["round"] > 0]  # fmt: skip
        return row["miou"]

    for comparison, method, mode, other_method, other_mode in (
        ("uaal - standard", "entropy", "uaal", "entropy", "standard"),
        ("mc_entropy - random", "mc_entropy", "standard", "random", "standard"),
    ):
        for budget in BUDGETS:
            diffs = np.array([value(method, mode, budget, s) - value(other_method, other_mode, budget, s)
                              for s in range(4)])  # fmt: skip
            half = scipy.stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2
            got = paired[(comparison, method, mode, budget)]
            assert float(got["mean"]) == pytest.approx(diffs.mean(), abs=1e-12)
            assert float(got["low"]) == pytest.approx(diffs.mean() - half, abs=1e-4)
            assert float(got["high"]) == pytest.approx(diffs.mean() + half, abs=1e-4)
            assert int(got["n"]) == 4 and (got["excludes_zero"] == "True") == (
                diffs.mean() - half > 0 or diffs.mean() + half < 0
            )
    # Round 0 is compared between modes (it differs with UAAL training), never between methods.
    assert ("uaal - standard", "random", "uaal", INITIAL) in paired
    assert not any(key[0].endswith("- random") and key[3] == INITIAL for key in paired)
    text = open(written["report"], encoding="utf-8").read()
    assert "## Paired differences" in text and "methods against Random" in text
    for mode in ("standard", "UAAL"):  # each mode's comparison against Random has its own row
        assert f"| MC-Dropout | {mode} | mc_entropy - random |" in text


def test_a_clear_difference_is_bold_and_noise_is_not(tmp_path):
    rng = np.random.default_rng(0)
    _write_experiment(tmp_path / "exp", rng, seeds=(0, 1, 2))
    state_path = tmp_path / "exp" / "state.json"
    state = json.loads(state_path.read_text())
    for row in state["results"]:  # UAAL + entropy 5 points above standard in every seed; the rest noise
        if row["round"] > 0:
            row["miou"] = (
                0.5 + 0.01 * row["seed"] + (0.05 if (row["method"], row["mode"]) == ("entropy", "uaal") else 0)
            )
    state_path.write_text(json.dumps(state))
    comparisons = report.paired_comparisons(report.seed_cells(report.load_experiments([tmp_path / "exp"])))
    by_key = {(c["comparison"], c["method"], c["budget"]): c for c in comparisons}
    entropy = by_key[("uaal - standard", "entropy", BUDGETS[0])]
    assert entropy["mean"] == pytest.approx(0.05) and entropy["excludes_zero"]
    assert by_key[("uaal - standard", "random", BUDGETS[0])]["mean"] == pytest.approx(0.0)
    assert not by_key[("uaal - standard", "random", BUDGETS[0])]["excludes_zero"]
    markdown = report.paired_markdown(comparisons)
    assert "**+5.00 [+5.00, +5.00]**" in markdown


def test_quality_columns_get_tables_figures_and_pairs(tmp_path, seed):
    rows = _write_experiment(tmp_path / "exp", np.random.default_rng(seed), seeds=(0, 1))
    state_path = tmp_path / "exp" / "state.json"
    state = json.loads(state_path.read_text())
    for i, row in enumerate(state["results"]):
        row["entropy_auroc"] = 0.6 + 0.001 * i
        if row["round"] > 0:
            row["select_ms_per_image"] = {"random": 0.01, "entropy": 2.0, "mc_entropy": 11.0}[row["method"]]
            row["select_forwards_per_image"] = {"random": 0, "entropy": 1, "mc_entropy": 5}[row["method"]]
    state_path.write_text(json.dumps(state))
    written = report.write_report([tmp_path / "exp"], tmp_path / "out")
    assert "entropy_auroc_vs_budget_synthetic_small" in written
    text = open(written["report"], encoding="utf-8").read()
    assert "## AUROC of entropy as an error detector" in text and "0.6" in text
    assert "| MC-Dropout | 5 | 11 |" in text  # forward passes and ms per pool image
    with open(written["summary"], newline="") as file:
        assert {line["metric"] for line in csv.DictReader(file)} == {"miou", "entropy_auroc"}
    with open(written["runs"], newline="") as file:
        assert "entropy_auroc" in next(csv.DictReader(file))
    assert len(rows) == len(state["results"])
