"""What every benchmark script shares: shapes, the machine's load and copy bandwidth, interleaved timing
rounds, torch.compile of a baseline, and the Markdown report with its JSON twin.

The scripts are run as files (``python benchmarks/bench_loss.py``), so they import this module by its
bare name after putting ``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_shape(text: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in text.lower().split("x"))
    if len(dims) < 2:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected NxC[xHxW...]")
    return dims


def shape_str(shape) -> str:
    return "x".join(str(d) for d in shape)


def shape_label(shape) -> str:
    n, c, *spatial = shape
    return f"N={n} C={c} {'x'.join(map(str, spatial))}"


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU s busy on the whole machine, CPU s used by this process and its children)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return time.perf_counter(), busy / tick, own / tick


def other_load(start, end) -> float:
    """Share of the machine's CPUs that other processes used between two snapshots."""
    wall = end[0] - start[0]
    others = (end[1] - start[1]) - (end[2] - start[2])
    return max(others, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


def copy_bandwidth(nbytes: int, repeat: int) -> float:
    """Bytes/s of a float32 tensor copy (read + write counted), median of `repeat` copies."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.zeros_like(src)  # touched: no page faults inside the timed copies
    dst.copy_(src)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def time_call(fn, setup=None) -> float:
    if setup is not None:
        setup()  # outside the timed region
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    del out  # freed outside the timed region
    return elapsed


def run_rounds(calls: dict, repeat: int, warmup: int, label: str, setups: dict | None = None):
    """Median seconds per call, methods interleaved in each round; and the other processes' CPU share."""
    setups = setups or {}
    for name, fn in calls.items():
        for _ in range(max(warmup, 0)):
            time_call(fn, setups.get(name))
    times = {name: [] for name in calls}
    snap = cpu_snapshot()
    for r in range(repeat):
        print(f"[{label}] round {r + 1}/{repeat}", flush=True)
        for name, fn in calls.items():
            times[name].append(time_call(fn, setups.get(name)))
    busy = other_load(snap, cpu_snapshot())
    return {name: statistics.median(v) for name, v in times.items()}, busy


def load_note(label: str, busy: float) -> str:
    return f"{label}: other processes used {busy:.0%} of the machine's CPUs during the timed rounds" + (
        " -- WARNING: timings disturbed, rerun on an idle machine" if busy > 0.1 else ""
    )


def compile_timed(fn, first_call):
    """torch.compile(fn) and the seconds its first call took (compilation included), or the error."""
    torch._dynamo.reset()  # each case compiles afresh: no recompile limit reached, no stale guards
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    try:
        first_call(compiled)
    except Exception as exc:  # noqa: BLE001  (inductor's failures have no common type)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return compiled, time.perf_counter() - t0


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def fmt(v, spec: str = ".2f", suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec) + suffix


def fmt_ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.3g}"


def fill_defaults(args, full: dict, quick: dict) -> None:
    """Options left at None take their value from the ``quick`` or ``full`` table."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def log_report_header(log, title: str) -> str:
    """Logs the lines every benchmark report starts with (title, command, date, torch and machine);
    returns the command line."""
    cmdline = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    log(f"# {title}")
    log()
    log(f"- command: `{cmdline}`")
    log(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    log(
        f"- torch {torch.__version__}, threads {torch.get_num_threads()}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    return cmdline


class Report:
    """A benchmark's Markdown report: each logged line is printed at once and kept; :meth:`write`
    saves them (default ``results/<stem>.md``, ``<stem>_quick.md`` with ``--quick``) and a JSON twin."""

    def __init__(self, args, stem: str) -> None:
        suffix = "_quick" if args.quick else ""
        self.path = Path(args.output) if args.output else RESULTS_DIR / f"{stem}{suffix}.md"
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, data=None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")
        if data is None:
            print(f"\nwritten: {self.path}")
            return
        self.path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nwritten: {self.path} (and {self.path.with_suffix('.json').name})")
