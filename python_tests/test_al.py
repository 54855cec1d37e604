"""The active-learning loop (uaal_ext.experiment.al): rounds, labeled sets, resume after SIGKILL, configs."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from uaal_ext.acquisition import method_names, select_from_pool
from uaal_ext.experiment import al
from uaal_ext.experiment.al import (
    ExperimentConfig,
    RoundStatus,
    StateError,
    load_config,
    load_state,
    run_experiment,
    run_key,
)
from uaal_ext.experiment.al import loop as al_loop
from uaal_ext.experiment.cli import demo_config

REPO = Path(__file__).resolve().parents[1]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# A whole experiment in seconds: 40 pool images of 32x64, rounds of 2 optimizer steps.
TINY = dict(
    pool_size=40,
    val_size=4,
    image_size=(32, 64),
    initial_fraction=0.05,
    budgets=(0.1, 0.2),
    iterations=2,
    batch_size=4,
    num_samples=1,
    acquisition_samples=2,
    eval_batch_size=8,
    lr=0.05,
)


def tiny_config(**changes):
    return ExperimentConfig(**{**TINY, **changes})


def labeled_sets(state):
    """{run key: [labeled ids of each round]}."""
    return {key: [entry.labeled for entry in run.rounds] for key, run in state.runs.items()}


def check_rounds(state, config):
    """The invariants of every finished experiment: sizes, nesting, no duplicates, shared initial sets."""
    sizes = state.budget_sizes
    assert sizes == al.budget_sizes(config, state.pool_size)
    for seed in config.seeds:
        initial = state.initial[str(seed)]
        assert len(initial) == sizes[0] == len(set(initial))
        for mode in config.modes:
            first = state.runs[run_key(seed, mode, None)].rounds
            assert [e.labeled for e in first] == [initial]
            for method in config.methods:
                rounds = state.runs[run_key(seed, mode, method)].rounds
                assert [e.round for e in rounds] == list(range(1, len(config.budgets) + 1))
                previous = initial
                for entry, size in zip(rounds, sizes[1:]):
                    labeled = entry.labeled
                    assert len(labeled) == size == len(set(labeled)) == entry.num_labeled
                    assert set(previous) < set(labeled) and all(0 <= i < state.pool_size for i in labeled)
                    assert sorted(set(labeled) - set(previous)) == sorted(entry.added)
                    assert entry.status is RoundStatus.DONE and 0 <= entry.metrics["miou"] <= 1
                    previous = labeled
    rows = state.results
    assert len(rows) == len(config.seeds) * len(config.modes) * len(config.methods) * (1 + len(config.budgets))


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    config = tiny_config(methods=("random", "entropy"), seeds=(0, 1))
    return config, out, run_experiment(config, out, progress=False)


def test_experiment_rounds_and_files(tiny_experiment):
    config, out, state = tiny_experiment
    assert state.finished and state.budget_sizes == [2, 4, 8]
    check_rounds(state, config)
    # What is on disk is what was returned (compared as JSON text: NaN IoUs of absent classes).
    assert json.dumps(load_state(out).to_json()) == json.dumps(state.to_json())
    assert json.loads((out / "state.json").read_text())["format"] == 1
    assert (out / "state.json").stat().st_mode & 0o777 == 0o666 & ~_umask()  # like every other output
    # Different seeds draw different initial sets; the initial set is shared by modes and methods.
    assert state.initial["0"] != state.initial["1"]
    for run in state.runs.values():
        for entry in run.rounds:
            assert (out / entry.checkpoint).is_file()
    assert not list(out.rglob("*.train.pt")) and not list(out.rglob("*.tmp"))
    # Round 0's result is shared by every method of its mode and seed.
    initial_rows = [r for r in state.results if r["round"] == 0 and r["seed"] == 0 and r["mode"] == "uaal"]
    assert {r["method"] for r in initial_rows} == set(config.methods) and len({r["miou"] for r in initial_rows}) == 1


def test_finished_experiment_reruns_nothing(tiny_experiment, monkeypatch):
    config, out, state = tiny_experiment

    def fail(*args, **kwargs):
        raise AssertionError("a finished experiment trained or selected again")

    monkeypatch.setattr(al_loop, "train", fail)
    monkeypatch.setattr(al_loop, "select_from_pool", fail)
    lines = []
    again = run_experiment(config, out, progress=False, log=lines.append)
    assert labeled_sets(again) == labeled_sets(state) and again.results == state.results
    total = len(config.seeds) * len(config.modes) * (1 + len(config.methods) * len(config.budgets))
    assert lines and lines[0].startswith("resuming") and f"{total} of {total} rounds done" in lines[0]


def test_entropy_round_picks_the_top_scores_of_the_previous_model(tiny_experiment):
    """Round 1 of the entropy run = the top entropy images of the round-0 model, outside the initial set."""
    config, out, state = tiny_experiment
    seed, mode = 0, "standard"
    model = al.load_round_model(out, seed, mode, None, 0)
    data = al.build_datasets(config)
    loader = torch.utils.data.DataLoader(al.datasets.IndexedImages(data.pool_eval), batch_size=8)
    initial = state.initial[str(seed)]
    expected = select_from_pool(
        model, loader, "entropy", state.budget_sizes[1] - len(initial), exclude=initial, progress=False
    )
    entry = state.runs[run_key(seed, mode, "entropy")].round(1)
    assert entry.added == expected


def test_every_method_through_the_loop(tmp_path):
    methods = method_names()
    config = tiny_config(methods=methods, modes=("standard",), seeds=(3,), budgets=(0.1,))
    state = run_experiment(config, tmp_path, progress=False)
    check_rounds(state, config)
    added = {m: state.runs[run_key(3, "standard", m)].rounds[0].added for m in methods}
    assert len({tuple(sorted(a)) for a in added.values()}) > 1  # the methods do not all agree


def test_finetune_starts_from_the_previous_round(tmp_path, monkeypatch):
    loaded = []
    original = al_loop._load_round_weights

    def spy(model, path):
        loaded.append(os.path.relpath(path, tmp_path))
        return original(model, path)

    monkeypatch.setattr(al_loop, "_load_round_weights", spy)
    config = tiny_config(methods=("random",), modes=("standard",), seeds=(0,), retrain="finetune")
    run_experiment(config, tmp_path, progress=False)
    # Round 1 trains from the initial model, round 2 from round 1's (each also loaded to evaluate).
    assert os.path.join("checkpoints", "seed=0", "standard", "initial", "round0.pt") in loaded
    assert loaded.count(os.path.join("checkpoints", "seed=0", "standard", "random", "round1.pt")) == 2


def test_real_dataset_fixture_through_the_loop(tmp_path):
    from test_data import _ade20k

    root = _ade20k(tmp_path, splits=("training", "validation"), stems=tuple(f"ADE_train_{i:08d}" for i in range(1, 5)))
    config = ExperimentConfig(
        dataset="ade20k",
        root=str(root),
        pool_size=None,
        val_size=None,
        image_size=(16, 32),
        methods=("entropy",),
        modes=("standard",),
        seeds=(0,),
        initial_fraction=0.5,
        budgets=(1.0,),
        iterations=1,
        batch_size=2,
        eval_batch_size=1,
    )
    state = run_experiment(config, tmp_path / "run", progress=False)
    check_rounds(state, config)
    assert state.pool_size == 4 and len(state.results) == 2


# ---------------------------------------------------------------------------------------------------
# Resume


def test_resume_after_interrupted_training(tmp_path, monkeypatch):
    """A run stopped in the middle of a round's training resumes that round from its epoch checkpoint."""
    config = tiny_config(methods=("entropy",), modes=("standard",), seeds=(0,), iterations=3, batch_size=2)
    reference = run_experiment(config, tmp_path / "reference", progress=False)

    calls = {"n": 0}
    original = al_loop.train

    class StopsInSecondEpoch(torch.utils.data.Dataset):
        """Round 1's labeled set (4 images, 2 epochs of 2 steps): the 'kill' comes with the 5th item."""

        def __init__(self, dataset):
            self.dataset, self.fetched = dataset, 0

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, index):
            self.fetched += 1
            if self.fetched == 5:
                raise KeyboardInterrupt
            return self.dataset[index]

    def train_then_stop(model, dataset, train_config, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            assert train_config.epochs == 2 and len(dataset) == 4
            dataset = StopsInSecondEpoch(dataset)
        return original(model, dataset, train_config, **kwargs)

    monkeypatch.setattr(al_loop, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "run", progress=False)
    state = load_state(tmp_path / "run")
    assert not state.finished
    assert state.runs[run_key(0, "standard", "entropy")].rounds[0].status is RoundStatus.SELECTED
    assert any((tmp_path / "run").rglob("round1.train.pt"))  # the epoch checkpoint it resumes from
    monkeypatch.undo()
    resumed = run_experiment(config, tmp_path / "run", progress=False)
    assert labeled_sets(resumed) == labeled_sets(reference)


def _wait_for(condition, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    raise TimeoutError("the experiment did not reach the point to kill it at")


def _state_or_none(out):
    try:
        return load_state(out)
    except StateError:
        return None


def test_resume_after_sigkill(tmp_path):
    """Kill a real `uaal run` process twice (mid-training, right after a selection), rerun: same labeled sets."""
    config = tiny_config(methods=("entropy", "random"), modes=("standard",), seeds=(0,), iterations=6, batch_size=2)
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    reference = run_experiment(config, tmp_path / "reference", progress=False)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "uaal_ext",
        "run",
        "--config",
        str(config_file),
        "--out",
        str(out),
        "--no-progress",
    ]
    # The reference ran here: the same thread count gives the same float rounding, hence the same picks.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}

    def mid_training():
        return any(out.rglob("round1.train.pt"))

    def after_a_selection():
        state = _state_or_none(out)
        runs = state.runs if state else {}
        return any(
            entry.status is RoundStatus.SELECTED
            for key, run in runs.items()
            if key.endswith("/random")
            for entry in run.rounds
        )

    for condition in (mid_training, after_a_selection):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            reached = _wait_for(condition, process)
            assert reached, process.stderr.read().decode()
            process.send_signal(signal.SIGKILL)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == -signal.SIGKILL
        state = load_state(out)  # readable after every kill: writes are atomic
        assert not state.finished
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    state = load_state(out)
    assert state.finished
    check_rounds(state, config)
    assert labeled_sets(state) == labeled_sets(reference)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.train.pt"))


def test_corrupt_state_is_reported_and_left_alone(tmp_path):
    config = tiny_config(methods=("random",), modes=("standard",), seeds=(0,))
    (tmp_path / "state.json").write_bytes(b'{"format": 1, "config": {"dataset": "synth')
    before = (tmp_path / "state.json").read_bytes()
    with pytest.raises(StateError, match=r"state\.json.*corrupt.*left as it is"):
        run_experiment(config, tmp_path, progress=False)
    (tmp_path / "state.json").write_text(json.dumps({"format": 1, "config": {}}))
    with pytest.raises(StateError, match="missing"):
        run_experiment(config, tmp_path, progress=False)
    (tmp_path / "state.json").write_bytes(before)
    result = subprocess.run([sys.executable, "-m", "uaal_ext", "report", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "state.json").read_bytes() == before


def test_resume_with_another_config_names_the_keys(tiny_experiment):
    config, out, _ = tiny_experiment
    with pytest.raises(ValueError, match=r"exponent: 2\.0 -> 3\.0.*lr"):
        run_experiment(dataclasses.replace(config, exponent=3.0, lr=0.5), out, progress=False)
    # Where and how fast it runs may change.
    run_experiment(dataclasses.replace(config, eval_batch_size=3), out, progress=False)


# ---------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(methods=("entropy", "coreset")), r"'methods'.*random.*coreset"),
        (dict(methods=()), "'methods'"),
        (dict(modes=("standard", "standard")), "'modes'.*distinct"),
        (dict(dataset="voc"), r"'dataset'.*synthetic.*cityscapes.*ade20k.*voc"),
        (dict(dataset="cityscapes"), "'root'"),
        (dict(model="vit"), "'model'.*resnet50"),
        (dict(budgets=(0.2, 0.1)), "'budgets'.*increasing"),
        (dict(budgets=(0.04,)), "'budgets'"),
        (dict(initial_fraction=0.0), "'initial_fraction'"),
        (dict(seeds=(0, 0)), "'seeds'"),
        (dict(image_size=(30, 64)), "'image_size'.*16"),
        (dict(retrain="warm"), "'retrain'.*scratch.*finetune"),
        (dict(lr=-1.0), "'lr'|config key lr"),
        (dict(schedule="sawtooth"), "'schedule'.*cosine_decrease"),
        (dict(uncertainty="ensembles"), "'uncertainty'.*kernel_noise"),
        (dict(iterations=0), "'iterations'"),
        (dict(acquisition_samples=0), "'acquisition_samples'"),
        (dict(reduction="median"), "'reduction'.*topk_mean"),
    ],
)
def test_bad_config_names_the_key(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_config(**changes)


def test_budget_sizes_must_increase():
    config = tiny_config(pool_size=10, initial_fraction=0.05, budgets=(0.1,))
    with pytest.raises(ValueError, match=r"sizes \[1, 1\].*pool_size"):
        al.budget_sizes(config, 10)
    assert al.budget_sizes(tiny_config(pool_size=400), 400) == [20, 40, 80]


def test_load_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("methods: [entropy, bald]\nseeds: [3, 4]\neta: 0.005\n")
    config = load_config(path, ["eta=0.05", "budgets=[0.1, 0.3]", "weights=null"])
    assert config.methods == ("entropy", "bald") and config.seeds == (3, 4)
    assert config.eta == 0.05 and config.budgets == (0.1, 0.3) and config.weights is None
    assert config.lr == ExperimentConfig().lr  # missing keys keep their defaults
    path.write_text("method: [entropy]\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['method'\].*'methods'"):
        load_config(path)
    path.write_text("methods: [entropy\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["eta"])


def test_shipped_configs_load():
    files = sorted((REPO / "configs").glob("*.yaml"))
    names = {f.stem for f in files}
    for dataset in ("cityscapes", "ade20k"):
        for model in ("mobilenetv3", "resnet50", "xception65"):
            assert f"{dataset}_{model}" in names
    for path in files:
        config = load_config(path, ["root=/data"])
        assert config.to_dict() == ExperimentConfig.from_dict(config.to_dict()).to_dict()
        if path.stem.startswith(("cityscapes", "ade20k")):
            dataset, model = path.stem.split("_")
            assert (config.dataset, config.model, config.device) == (dataset, model, "cuda")
            assert config.methods == ("random", "entropy", "mc_entropy", "noise_stability")
    # The demo's config file is the demo.
    assert load_config(REPO / "configs" / "synthetic_demo.yaml") == demo_config()


def test_cli_run_sweep_report(tmp_path, capsys):
    from uaal_ext.experiment.cli import main

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(methods=("entropy",), modes=("uaal",), seeds=(0,)).to_dict()))
    assert (
        main(
            [
                "run",
                "--config",
                str(config_file),
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
                "--set",
                "budgets=[0.1]",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Entropy" in out and (tmp_path / "run" / "report" / "report.md").is_file()
    assert (
        main(
            [
                "sweep",
                "--config",
                str(config_file),
                "--grid",
                "exponent=1,3",
                "--out",
                str(tmp_path / "sweep"),
                "--no-progress",
                "--set",
                "budgets=[0.1]",
            ]
        )
        == 0
    )
    assert load_state(tmp_path / "sweep" / "exponent=3").config["exponent"] == 3
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "exponent=1" in report and "exponent=3" in report
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").is_file()
    capsys.readouterr()
    assert main(["sweep", "--config", str(config_file), "--grid", "exponents=1,3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key 'exponents'" in capsys.readouterr().err
    assert main(["run", "--config", str(config_file), "--set", "eta=-1", "--out", str(tmp_path / "y")]) == 2
    assert "eta" in capsys.readouterr().err


def test_cli_help_and_info(capsys):
    from uaal_ext.experiment.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "run", "sweep", "report", "maps", "info"):
        assert command in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--set" in capsys.readouterr().out
    assert main(["info"]) == 0
    info = capsys.readouterr().out
    assert "kernels" in info and "cpu" in info and torch.__version__ in info


# ---------------------------------------------------------------------------------------------------
# Modes, uncertainty quality, selection cost, training-only experiments


def test_uaal_select_mode_selects_with_the_uaal_model_and_evaluates_the_standard_one(tmp_path, monkeypatch):
    trained_modes = []
    original = al_loop.train

    def spy(model, dataset, config, **kwargs):
        trained_modes.append((os.path.basename(kwargs["checkpoint_path"]), config.mode))
        return original(model, dataset, config, **kwargs)

    monkeypatch.setattr(al_loop, "train", spy)
    config = tiny_config(methods=("entropy",), modes=("uaal_select",), seeds=(0,), budgets=(0.1,))
    state = run_experiment(config, tmp_path, progress=False)
    assert trained_modes == [("round0.train.pt", "standard"), ("round0.selector.train.pt", "uaal"),
                             ("round1.train.pt", "standard"), ("round1.selector.train.pt", "uaal")]  # fmt: skip
    first = state.runs[run_key(0, "uaal_select", None)].round(0)
    assert first.selector_checkpoint.endswith("round0.selector.pt") and first.selector_metrics["miou"] >= 0
    # Round 1's picks are the top-entropy images of the UAAL selector, not of the standard learner.
    loader = torch.utils.data.DataLoader(al.datasets.IndexedImages(al.build_datasets(config).pool_eval), batch_size=8)
    k = state.budget_sizes[1] - len(first.labeled)
    selector = al.load_round_model(tmp_path, 0, "uaal_select", None, 0, selector=True)
    learner = al.load_round_model(tmp_path, 0, "uaal_select", None, 0)
    by_selector = select_from_pool(selector, loader, "entropy", k, exclude=first.labeled, progress=False)
    by_learner = select_from_pool(learner, loader, "entropy", k, exclude=first.labeled, progress=False)
    assert state.runs[run_key(0, "uaal_select", "entropy")].round(1).added == by_selector != by_learner
    row = [r for r in state.results if r["round"] == 1][0]
    assert {"entropy_auroc", "selector_entropy_auroc", "ece", "selector_ece"} <= set(row)


def test_quality_and_selection_cost_are_recorded(tmp_path):
    config = tiny_config(methods=("random", "mc_entropy"), modes=("standard",), seeds=(0,), budgets=(0.1,),
                         quality_sources=("entropy", "mc_dropout"))  # fmt: skip
    state = run_experiment(config, tmp_path, progress=False)
    for method, forwards in (("random", 0), ("mc_entropy", config.acquisition_samples)):
        entry = state.runs[run_key(0, "standard", method)].round(1)
        assert entry.select_images == config.pool_size - state.budget_sizes[0]
        assert entry.select_forwards == forwards * entry.select_images
        quality = entry.metrics["uncertainty_quality"]
        assert set(quality) == {"entropy", "mc_dropout"} and 0 <= quality["entropy"]["auroc"] <= 1
        (row,) = [r for r in state.results if r["method"] == method and r["round"] == 1]
        assert row["select_forwards_per_image"] == forwards and row["select_ms_per_image"] > 0
        assert row["entropy_auroc"] == quality["entropy"]["auroc"] and "mc_dropout_auroc" in row


def test_an_experiment_without_budgets_trains_round_zero_only(tmp_path):
    config = tiny_config(
        methods=("random",), modes=("standard", "uaal"), seeds=(0, 1), budgets=(), initial_fraction=0.1
    )
    state = run_experiment(config, tmp_path, progress=False)
    assert sorted(state.runs) == [run_key(s, m, None) for s in (0, 1) for m in ("standard", "uaal")]
    assert len(state.results) == 4 and state.finished


def test_dataset_options_reach_the_dataset(tmp_path):
    config = tiny_config(dataset_options={"frames_per_scene": 4, "rare_scale": 0.5})
    data = al.build_datasets(config)
    assert data.pool_eval.frames_per_scene == 4 and data.val.frames_per_scene == 1
    assert data.pool_eval.rare_scale == data.val.rare_scale == 0.5
    with pytest.raises(ValueError, match="'dataset_options'.*frames_per_scene"):
        tiny_config(dataset_options={"frames": 4})


def test_shards_of_the_grid_together_equal_one_run(tiny_experiment, tmp_path):
    """`--shard i/n`: each part runs its (seed, mode) groups; the parts' folders report exactly
    what one unsharded run reports, and a part resumes only as the part it was."""
    from uaal_ext.experiment import report

    config, full, state = tiny_experiment
    groups = [(seed, mode) for seed in config.seeds for mode in config.modes]
    assert (
        al.shard_groups(config, (0, 3)) + al.shard_groups(config, (1, 3)) + al.shard_groups(config, (2, 3))
        == groups[0::3] + groups[1::3] + groups[2::3]
    )
    parts = [tmp_path / "part0", tmp_path / "part1"]
    states = [run_experiment(config, part, shard=(i, 2), progress=False, log=lambda line: None) for i, part in
              enumerate(parts)]  # fmt: skip
    assert all(s.finished for s in states)
    # Every run is in exactly one part, with the labeled sets of the unsharded run.
    keys = [set(s.runs) for s in states]
    assert not keys[0] & keys[1] and keys[0] | keys[1] == set(state.runs)
    for part_state in states:
        for key, run in part_state.runs.items():
            assert [r.labeled for r in run.rounds] == [r.labeled for r in state.runs[key].rounds]
    one, merged = (report.load_experiments(folders) for folders in ([full], parts))
    assert report.summarize(merged) == report.summarize(one)
    assert report.paired_table(merged) == report.paired_table(one)
    with pytest.raises(ValueError, match=r"runs part 0/2 of the grid, this command asks for part 1/2"):
        run_experiment(config, parts[0], shard=(1, 2), progress=False)
    with pytest.raises(ValueError, match="shard must be"):
        al.shard_groups(config, (2, 2))


def test_cli_shard_argument(tmp_path, capsys):
    from uaal_ext.experiment.cli import main

    assert main(["run", "--out", str(tmp_path), "--shard", "2/2"]) == 2
    assert "--shard must look like i/n" in capsys.readouterr().err
