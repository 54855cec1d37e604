"""The one-call GPU check (scripts/gpu_check.sh) in its --cpu-smoke mode: every step's Python runs
here at tiny sizes, so the script that runs on a lent GPU machine cannot rot between GPU days."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run(["bash", str(SCRIPT), str(out), "--cpu-smoke"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_every_step_passes_and_the_results_fit_in_eight_files(smoke):
    summary = (smoke / "summary.md").read_text()
    rows = re.findall(r"^\| (\S+) \| (.+?) \| \d+ \| \S+ \|$", summary, flags=re.MULTILINE)
    assert [name for name, _ in rows] == [
        "environment",
        "build",
        "cuda-tests",
        "distributed",
        "sanitizer",
        "benchmarks",
    ]
    assert all(result == "ok" for _, result in rows), summary
    files = sorted(path.name for path in smoke.iterdir())
    assert len(files) <= 8 and all((smoke / name).stat().st_size > 0 for name in files), files


def test_the_cuda_tests_are_selected_by_their_marker(smoke):
    collected = re.search(r"(\d+)/(\d+) tests collected", (smoke / "cuda_tests.log").read_text())
    assert collected is not None and int(collected.group(1)) > 1000  # every test skipped here for want of CUDA


def test_a_tiny_experiment_runs_under_torchrun(smoke):
    log = (smoke / "cuda_tests.log").read_text()
    assert "seed=0/uaal/noise_stability round 1" in log and "1 (gloo, CPU; this is rank 0)" in log


def test_the_kernel_sweep_calls_every_op(smoke):
    log = (smoke / "sanitizer.log").read_text()
    calls = re.search(r"gpu_kernel_sweep: (\d+) op calls on cpu .* passed", log)
    assert calls is not None and int(calls.group(1)) > 500, log


def test_the_benchmarks_fill_every_table_and_project_every_paper_config(smoke):
    report = (smoke / "gpu_benchmarks_smoke.md").read_text()
    for title in ("Loss fwd+bwd", "Acquisition scores", "Perturbation", "Training step", "Projected GPU-hours"):
        assert f"## {title}" in report
    # Both layouts: 4 loss rows and 3 score rows each, and perturbation_statistics in each.
    assert report.count("| contiguous |") == report.count("| channels_last |") == 7
    for layout in ("contiguous", "channels_last"):
        assert re.search(rf"^\| perturbation_statistics \| K=\S+ x \S+, {layout} \|", report, flags=re.MULTILINE)
    projected = re.findall(r"^\| ((?:cityscapes|ade20k)_\w+) \|", report, flags=re.MULTILINE)
    assert sorted(projected) == sorted(
        path.stem for path in (REPO / "configs").glob("*_*.yaml") if path.stem.startswith(("cityscapes", "ade20k"))
    )
    assert "Skipped" not in report


def test_bad_arguments_print_the_usage(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--frobnicate"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash scripts/gpu_check.sh OUT" in done.stderr
