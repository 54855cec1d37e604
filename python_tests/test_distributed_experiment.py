"""The AL driver under ``torchrun --nproc_per_node 2`` on the CPU (gloo): a tiny experiment runs to
its report like one process does, and a run with a rank SIGKILLed mid-experiment resumes on relaunch
with every labeled set it had recorded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port

# 40 pool images, rounds of 6 optimizer steps on a global batch of 4 (2 images per rank).
TINY = dict(
    pool_size=40,
    val_size=8,
    image_size=[32, 64],
    initial_fraction=0.1,
    budgets=[0.2, 0.3],
    iterations=6,
    batch_size=4,
    num_samples=1,
    acquisition_samples=2,
    eval_batch_size=8,
    lr=0.05,
    methods=["random", "entropy"],
    modes=["uaal"],
    seeds=[0, 1],
)


def _environment():
    # One thread per process: two ranks share this machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "UAAL_COLLECTIVE_TIMEOUT": "120", "PYTHONUNBUFFERED": "1"}


def _command(launcher, config, out):
    return [*launcher, "-m", "uaal_ext", "run", "--config", str(config), "--out", str(out), "--no-progress"]


def _state(out):
    return json.loads((out / "state.json").read_text())


def _labeled(state):
    """{(run key, round): labeled ids} of every recorded round."""
    return {(key, r["round"]): r["labeled"] for key, run in state["runs"].items() for r in run["rounds"]}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, config_file):
    """The same experiment by 2 ranks under torchrun and by one process."""
    folder = tmp_path_factory.mktemp("runs")
    two, one = folder / "two", folder / "one"
    for launcher, out in ((TORCHRUN, two), ([sys.executable], one)):
        done = subprocess.run(
            _command(launcher, config_file, out), env=_environment(), capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return {"two": _state(two), "one": _state(one), "folder": folder}


def test_two_ranks_run_the_experiment_to_its_report(runs):
    state = runs["two"]
    assert state["finished"] and state["world_size"] == 2
    assert (runs["folder"] / "two" / "report").is_dir()
    rounds = [r for run in state["runs"].values() for r in run["rounds"]]
    assert len(rounds) == 2 * (1 + 2 * 2) and all(r["status"] == "done" for r in rounds)
    for r in rounds:  # no image twice, the budget's count
        assert len(set(r["labeled"])) == len(r["labeled"]) == r["num_labeled"]


def test_two_ranks_reach_the_mious_of_one_process_within_the_seed_spread(runs):
    # Data-parallel training is another training (each rank's batch norm sees its 2 images, dropout
    # draws differ), so the numbers differ; by less than two seeds of one process differ.
    def mious(state):
        return {(row["seed"], row["method"], row["round"]): row["miou"] for row in state["results"]}

    two, one = mious(runs["two"]), mious(runs["one"])
    assert two.keys() == one.keys()
    cells = sorted({key[1:] for key in one})
    between_processes = sum(abs(two[(s, *c)] - one[(s, *c)]) for s in (0, 1) for c in cells) / (2 * len(cells))
    between_seeds = sum(abs(one[(0, *c)] - one[(1, *c)]) for c in cells) / len(cells)
    print(f"mean |2 ranks - 1 process| = {between_processes:.4f}, mean |seed 0 - seed 1| = {between_seeds:.4f}")
    assert between_processes <= between_seeds


def test_resuming_needs_the_same_number_of_processes(runs, config_file):
    done = subprocess.run(
        _command([sys.executable], config_file, runs["folder"] / "two"),
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "was run by 2 process(es) and this launch has 1" in done.stderr


def _rank_pid(launcher_pid, rank):
    """The pid of the torchrun worker with RANK=rank (a child of the launcher)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None


def test_a_rank_killed_mid_experiment_resumes_with_what_was_recorded(tmp_path, config_file):
    out = tmp_path / "killed"
    command = _command(TORCHRUN, config_file, out)
    launcher = subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    recorded = None
    while time.monotonic() < deadline and launcher.poll() is None:
        try:
            state = _state(out)
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        # Kill once a selection past round 0 is recorded and the run is past it (mid-round).
        if state and any(r["round"] > 0 for run in state["runs"].values() for r in run["rounds"]):
            pid = _rank_pid(launcher.pid, 1)
            if pid is not None:
                recorded = _labeled(state)
                os.kill(pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    assert recorded is not None, "the run ended before a round past 0 was recorded"
    _, errors = launcher.communicate(timeout=300)
    assert launcher.returncode != 0  # torchrun stopped the other rank and failed
    recorded = _labeled(_state(out))  # what was on disk when the job ended

    done = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    final = _state(out)
    assert final["finished"]
    assert "resuming" in done.stdout
    labeled = _labeled(final)
    for key, ids in recorded.items():
        assert labeled[key] == ids, key  # nothing recorded was lost or picked again
    for ids in labeled.values():
        assert len(set(ids)) == len(ids)
    assert len(labeled) == 2 * (1 + 2 * 2)


def test_info_shows_the_processes_of_the_launch():
    launched = subprocess.run(
        [*TORCHRUN, "-m", "uaal_ext", "info"], env=_environment(), capture_output=True, text=True, timeout=300
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("processes") == 1  # rank 0 prints
    assert "2 (gloo, CPU; this is rank 0)" in launched.stdout
    alone = subprocess.run(
        [sys.executable, "-m", "uaal_ext", "info"], env=_environment(), capture_output=True, text=True
    )
    assert "1 (not launched by torchrun" in alone.stdout
