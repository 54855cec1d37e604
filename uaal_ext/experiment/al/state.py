"""The state of an active-learning experiment, as dataclasses, and its file ``state.json``.

An experiment is a set of runs (:class:`RunState`), one per ``(seed, training mode, method)`` plus
one shared round-0 run per ``(seed, mode)`` (method ``"initial"``). A run is a list of rounds
(:class:`RoundState`); each round goes through the statuses of :class:`RoundStatus` in order:
its labeled set is recorded (``SELECTED``), a model is trained on it (``TRAINED``), the model is
evaluated (``DONE``). The file is rewritten atomically after every change of status, so a run killed
at any moment resumes from the last recorded one.

The JSON layout is format 1 (the first release's); keys added since are optional, so older files
load as they are. A file of another format, or one that cannot be read, raises :class:`StateError`
and is left untouched.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..files import atomic_write
from ..training import VALUES_BEFORE_KEY_EXISTED

STATE_FILE = "state.json"
STATE_FORMAT = 1
INITIAL = "initial"  # the method name of the shared round-0 run of a seed and mode


class StateError(RuntimeError):
    """An experiment state file that cannot be read, or is not one (it is left as it is)."""


class RoundStatus(str, enum.Enum):
    """How far a round has got; each status implies the ones before it."""

    SELECTED = "selected"  # the labeled set is recorded
    TRAINED = "trained"  # the round's weights are saved
    DONE = "done"  # the round's model is evaluated

    def reached(self, other: RoundStatus) -> bool:
        order = list(RoundStatus)
        return order.index(self) >= order.index(other)


@dataclass
class RoundState:
    """One round of one run."""

    round: int  # 0 is the initial random set
    budget: float  # labeled share of the pool after this round
    num_labeled: int
    labeled: list[int]  # pool indices, sorted
    added: list[int]  # the images this round picked, in the order picked
    select_seconds: float  # wall time of the selection
    status: RoundStatus = RoundStatus.SELECTED
    checkpoint: str | None = None  # the weights file, relative to the experiment folder
    metrics: dict[str, Any] | None = None  # SegmentationMetrics.as_dict() of the validation split
    epochs: int | None = None
    steps: int | None = None
    train_seconds: float | None = None  # every model the round trained
    final_loss: float | None = None
    select_images: int | None = None  # pool images the selection ran its passes on
    select_forwards: int | None = None  # forward passes it ran over them
    # Modes whose selector trains another way than the evaluated model (learner): the selector's.
    selector_checkpoint: str | None = None
    selector_metrics: dict[str, Any] | None = None

    def selector_weights(self, selector: bool = True) -> str:
        """The weights that select the next round's images (``selector``), or the evaluated ones."""
        return self.selector_checkpoint if selector and self.selector_checkpoint else self.checkpoint

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["status"] = self.status.value
        # Keys of the first format always; the later ones once set.
        return {k: v for k, v in values.items() if v is not None or k in ("checkpoint", "metrics")}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RoundState:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["status"] = RoundStatus(values["status"])
        return cls(**values)


@dataclass
class RunState:
    """The rounds of one ``(seed, mode, method)``; ``method == "initial"`` for the shared round 0."""

    seed: int
    mode: str
    method: str
    rounds: list[RoundState] = field(default_factory=list)

    @property
    def key(self) -> str:
        return run_key(self.seed, self.mode, None if self.method == INITIAL else self.method)

    def round(self, index: int) -> RoundState | None:
        """Round ``index`` if it is recorded."""
        return next((r for r in self.rounds if r.round == index), None)

    def trained_rounds(self) -> list[RoundState]:
        return [r for r in self.rounds if r.status.reached(RoundStatus.TRAINED)]

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mode": self.mode,
            "method": self.method,
            "rounds": [r.to_json() for r in self.rounds],
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunState:
        rounds = [RoundState.from_json(r) for r in values["rounds"]]
        return cls(seed=values["seed"], mode=values["mode"], method=values["method"], rounds=rounds)


@dataclass
class ExperimentState:
    """Everything an experiment folder records (what ``state.json`` holds)."""

    config: dict[str, Any]  # ExperimentConfig.to_dict() of the run
    pool_size: int
    budget_sizes: list[int]  # labeled images after round 0, 1, ...
    initial: dict[str, list[int]] = field(default_factory=dict)  # seed (as a string) -> initial labeled set
    runs: dict[str, RunState] = field(default_factory=dict)  # run_key -> run
    results: list[dict[str, Any]] = field(default_factory=list)  # one flat row per evaluated (run, round)
    finished: bool = False
    wall_time: float = 0.0  # seconds, over every session that worked on it
    shard: tuple[int, int] | None = None  # (i, n): this folder runs part i of n of the grid (None: all)
    world_size: int = 1  # processes that run it together (torchrun); a resume needs as many

    def run(self, seed: int, mode: str, method: str | None) -> RunState:
        """The run of ``(seed, mode, method)`` (``None``: the shared round 0), created empty if new."""
        key = run_key(seed, mode, method)
        if key not in self.runs:
            self.runs[key] = RunState(seed=seed, mode=mode, method=method or INITIAL)
        return self.runs[key]

    def rounds_done(self) -> int:
        return sum(r.status is RoundStatus.DONE for run in self.runs.values() for r in run.rounds)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": self.config,
            "pool_size": self.pool_size,
            "budget_sizes": self.budget_sizes,
            "initial": self.initial,
            "runs": {key: run.to_json() for key, run in self.runs.items()},
            "results": self.results,
            "finished": self.finished,
            "wall_time": self.wall_time,
            **({"shard": list(self.shard)} if self.shard is not None else {}),
            **({"world_size": self.world_size} if self.world_size != 1 else {}),
        }

    @classmethod
    def from_json(cls, values: Any, path: str) -> ExperimentState:
        missing = [key for key in _KEYS if not isinstance(values, dict) or key not in values]
        if missing or values["format"] != STATE_FORMAT:
            found = values.get("format") if isinstance(values, dict) else None
            raise StateError(
                f"{path!r} is not a uaal_ext experiment state of format {STATE_FORMAT} (missing {missing}, "
                f"format {found!r}); it was left as it is: move it away (or choose another --out) to start over"
            )
        try:
            runs = {key: RunState.from_json(run) for key, run in values["runs"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise StateError(
                f"{path!r} holds a run that cannot be read ({type(error).__name__}: {error}); it was left as it "
                f"is: move it away (or choose another --out) to start over"
            ) from None
        return cls(
            config=_with_keys_it_predates(values["config"]),
            pool_size=values["pool_size"],
            budget_sizes=values["budget_sizes"],
            initial=values["initial"],
            runs=runs,
            results=values["results"],
            finished=values["finished"],
            wall_time=float(values.get("wall_time", 0.0)),
            shard=tuple(values["shard"]) if values.get("shard") is not None else None,  # type: ignore[arg-type]
            world_size=int(values.get("world_size", 1)),
        )

    def save(self, out_dir: str | os.PathLike) -> None:
        """Rewrites ``out_dir/state.json`` atomically."""
        text = json.dumps(self.to_json(), indent=1, allow_nan=True).encode()
        atomic_write(os.path.join(os.fspath(out_dir), STATE_FILE), lambda file: file.write(text))


_KEYS = ("format", "config", "pool_size", "budget_sizes", "initial", "runs", "results", "finished")


def _with_keys_it_predates(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    return {**config, **{key: value for key, value in VALUES_BEFORE_KEY_EXISTED.items() if key not in config}}


def run_key(seed: int, mode: str, method: str | None) -> str:
    """The name of one run in the state (``method=None``: the shared round 0 of a seed and mode)."""
    return f"seed={seed}/{mode}/{method or INITIAL}"


def load_state(out_dir: str | os.PathLike) -> ExperimentState:
    """The state of the experiment in ``out_dir``; StateError if it is missing, unreadable or not one."""
    path = os.path.join(os.fspath(out_dir), STATE_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            values = json.load(file)
    except FileNotFoundError:
        raise StateError(f"{path!r} does not exist: {os.fspath(out_dir)!r} holds no experiment") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateError(
            f"experiment state {path!r} is corrupt or unreadable ({type(error).__name__}: {error}); it was "
            f"left as it is: move it away (or choose another --out) to start over"
        ) from None
    return ExperimentState.from_json(values, path)
