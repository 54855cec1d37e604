"""One process per output folder: the lock names its holder, and a killed holder's lock is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from uaal_ext.experiment.files import LOCK_FILE, FolderInUseError, FolderLock

# A second process that takes the lock, says so, and waits to be killed.
HOLDER = """
import sys, time
from uaal_ext.experiment.files import FolderLock
lock = FolderLock(sys.argv[1]).__enter__()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_second_process_is_refused_with_the_holder_named(tmp_path, holder):
    with pytest.raises(FolderInUseError, match=rf"process {holder.pid} on host '{socket.gethostname()}'"):
        FolderLock(tmp_path).__enter__()


def test_a_killed_holders_lock_is_taken_over(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with FolderLock(tmp_path) as lock:
        assert lock.previous["pid"] == holder.pid  # its note was left; the kernel dropped its lock
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    # Released in order, the file names nobody: the next holder takes nothing over.
    with FolderLock(tmp_path) as lock:
        assert lock.previous is None


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(FolderInUseError, match="already in use by this process"):
            FolderLock(tmp_path / ".." / tmp_path.name).__enter__()
    with FolderLock(tmp_path):  # released on exit
        pass


def test_experiment_and_command_on_a_held_folder_stop_before_touching_it(tmp_path, holder, capsys):
    from uaal_ext.experiment.al import ExperimentConfig, run_experiment
    from uaal_ext.experiment.cli import main

    config = ExperimentConfig(pool_size=20, val_size=4, image_size=(32, 32), seeds=(0,), iterations=1)
    with pytest.raises(FolderInUseError, match=str(holder.pid)):
        run_experiment(config, tmp_path, progress=False)
    assert main(["run", "--out", str(tmp_path), "--set", "pool_size=20", "--no-progress"]) == 2
    assert f"process {holder.pid}" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE]  # no state was written
