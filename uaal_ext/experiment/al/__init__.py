"""Active-learning experiments: the config (:mod:`.config`), the typed state and its file
(:mod:`.state`: ``RunState``, ``RoundState``, the file's name and format), the experiment's splits
(:mod:`.datasets`) and the loop (:mod:`.loop`)."""

from .config import AL_MODES, RETRAIN, RUNTIME_KEYS, ExperimentConfig, apply_overrides, load_config, parse_value
from .datasets import Datasets, build_datasets
from .loop import ActiveLearningLoop, budget_sizes, derive_seed, load_round_model, run_experiment, shard_groups
from .state import ExperimentState, RoundStatus, StateError, load_state, run_key

__all__ = [
    "ExperimentConfig",
    "AL_MODES",
    "RETRAIN",
    "RUNTIME_KEYS",
    "load_config",
    "apply_overrides",
    "parse_value",
    "Datasets",
    "build_datasets",
    "ActiveLearningLoop",
    "run_experiment",
    "shard_groups",
    "budget_sizes",
    "derive_seed",
    "load_round_model",
    "ExperimentState",
    "RoundStatus",
    "StateError",
    "load_state",
    "run_key",
]
