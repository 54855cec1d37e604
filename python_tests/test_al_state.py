"""The experiment state as typed records, and state files written by the first release (format 1)."""

import json
import shutil
from pathlib import Path

import pytest

from uaal_ext.experiment.al import (
    ExperimentConfig,
    ExperimentState,
    RoundStatus,
    StateError,
    load_state,
    run_experiment,
    run_key,
)
from uaal_ext.experiment.al import loop as al_loop
from uaal_ext.experiment.al.state import VALUES_BEFORE_KEY_EXISTED
from uaal_ext.experiment.report import load_experiments, paired_table, write_report

# A finished experiment (synthetic, 40-image pool, random and entropy, standard and UAAL, one seed)
# as the first release wrote it; its checkpoints are not kept.
FIXTURE = Path(__file__).parent / "fixtures" / "state_format1.json"


def _fixture_folder(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "state.json")
    return tmp_path


def _fixture_config():
    """The config that resumes the fixture: its own, with the by-count mean it ran with (today's
    default divides by the weights)."""
    return ExperimentConfig.from_dict({**json.loads(FIXTURE.read_text())["config"], "normalize_by_weight": False})


def test_first_release_state_loads_as_typed_records(tmp_path):
    state = load_state(_fixture_folder(tmp_path))
    assert isinstance(state, ExperimentState) and state.finished and state.budget_sizes == [2, 4, 8]
    run = state.runs[run_key(0, "uaal", "entropy")]
    assert [r.round for r in run.rounds] == [1, 2] and all(r.status is RoundStatus.DONE for r in run.rounds)
    assert run.round(2).labeled == sorted(run.round(1).labeled + run.round(2).added)
    # The config says what the run computed: a key it predates holds the behaviour of its time.
    assert state.config["normalize_by_weight"] is False and state.config["normalize"] == "scale"
    # Written back, the file says what it said, those keys added (format 1, keys in their order).
    original = json.loads(FIXTURE.read_text())
    missing = {k: v for k, v in VALUES_BEFORE_KEY_EXISTED.items() if k not in original["config"]}
    original["config"] = {**original["config"], **missing}
    assert json.dumps(state.to_json()) == json.dumps(original)


def test_first_release_state_does_not_resume_under_a_changed_default(tmp_path):
    """Today's default (the mean divided by the weights) is not what the first release computed:
    resuming its state with today's defaults fails naming the key, not mixing the two."""
    config = ExperimentConfig.from_dict(json.loads(FIXTURE.read_text())["config"])
    with pytest.raises(ValueError, match=r"normalize_by_weight: False -> True"):
        run_experiment(config, _fixture_folder(tmp_path), progress=False)


def test_first_release_state_resumes_without_work_and_reports(tmp_path, monkeypatch, capsys):
    out = _fixture_folder(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("a finished experiment trained or selected again")

    monkeypatch.setattr(al_loop, "train", fail)
    monkeypatch.setattr(al_loop, "select_from_pool", fail)
    state = run_experiment(_fixture_config(), out, progress=False)
    assert state.finished and len(state.results) == 12
    # Without progress bars the resume is still said, on stdout.
    assert f"resuming {str(out)!r}: 10 of 10 rounds done" in capsys.readouterr().out
    text = Path(write_report([out], out / "report")["report"]).read_text()
    assert "| Entropy | standard |" in text and "uaal - standard" in text  # the old rows, tables and pairs
    # What `uaal demo` and `uaal run` print after the main table: the same pairs as the report's.
    printed = paired_table(load_experiments([out]))
    assert "uaal - standard" in printed and "entropy - random" in printed and printed in text


def test_first_release_state_with_an_unfinished_round_trains_only_that_round(tmp_path, monkeypatch):
    values = json.loads(FIXTURE.read_text())
    last = values["runs"]["seed=0/uaal/entropy"]["rounds"][-1]
    last.update(status="selected", checkpoint=None, metrics=None)
    for key in ("epochs", "steps", "train_seconds", "final_loss"):
        last.pop(key)
    values["results"] = [
        r for r in values["results"] if not (r["mode"] == "uaal" and r["method"] == "entropy" and r["round"] == 2)
    ]
    values["finished"] = False
    (tmp_path / "state.json").write_text(json.dumps(values))
    trained = []
    original = al_loop.train

    def spy(model, dataset, config, **kwargs):
        trained.append(len(dataset))
        return original(model, dataset, config, **kwargs)

    monkeypatch.setattr(al_loop, "train", spy)
    state = run_experiment(_fixture_config(), tmp_path, progress=False)
    assert trained == [8] and state.finished  # round 2 of one run: 8 labeled images
    entry = state.runs["seed=0/uaal/entropy"].round(2)
    assert entry.status is RoundStatus.DONE and entry.labeled == last["labeled"] and entry.checkpoint
    assert len(state.results) == 12


def test_status_order_and_bad_files(tmp_path):
    assert RoundStatus.DONE.reached(RoundStatus.TRAINED) and not RoundStatus.SELECTED.reached(RoundStatus.TRAINED)
    values = json.loads(FIXTURE.read_text())
    (tmp_path / "state.json").write_text(json.dumps({**values, "format": 7}))
    with pytest.raises(StateError, match="format 1.*format 7.*left as it is"):
        load_state(tmp_path)
    values["runs"]["seed=0/uaal/entropy"]["rounds"][0]["status"] = "half-done"
    (tmp_path / "state.json").write_text(json.dumps(values))
    with pytest.raises(StateError, match="cannot be read.*half-done"):
        load_state(tmp_path)
