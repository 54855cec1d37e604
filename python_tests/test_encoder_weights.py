"""ImageNet encoders: ``build_model(encoder_weights=...)`` and the config key ``encoder_weights``.

No network: the weights come from a Hugging Face cache this file fills with generated checkpoints
(the keys and shapes the encoder expects, values no initialisation produces), read by smp, timm and
huggingface_hub themselves in a child process started with ``HF_HUB_OFFLINE=1`` and the cache
variables set, since huggingface_hub reads them when it is imported. Nothing of ours is mocked.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import save_file

from uaal_ext._validation import changed_keys
from uaal_ext.experiment.al import RUNTIME_KEYS, ExperimentConfig, load_config
from uaal_ext.experiment.models import (
    IMAGENET,
    MODELS,
    EncoderWeightsSource,
    build_model,
    encoder_weight_names,
    encoder_weights_source,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
PAPER_CONFIGS = sorted([*CONFIGS.glob("cityscapes_*.yaml"), *CONFIGS.glob("ade20k_*.yaml")])
RANDOM_INIT_CONFIGS = [CONFIGS / "synthetic_demo.yaml", *sorted((CONFIGS / "study").glob("*.yaml"))]
# The commit a branch ("main") of a generated repo resolves to: any 40 hex digits.
GENERATED_COMMIT = "0123456789abcdef0123456789abcdef01234567"
# What each preset's "imagenet" fetches (smp's table pins resnet50's commit; timm repos use main).
EXPECTED_SOURCES = {
    "mobilenetv3": ("timm/mobilenetv3_large_100.ra_in1k", ("model.safetensors",)),
    "resnet50": ("smp-hub/resnet50.imagenet", ("config.json", "model.safetensors")),
    "xception65": ("timm/xception65.ra3_in1k", ("model.safetensors",)),
    "small": ("timm/mobilenetv3_small_050.lamb_in1k", ("model.safetensors",)),
}

# Runs in the child: builds each requested model, saves its encoder's state_dict or reports the error.
_BUILD_IN_CHILD = """
import json, sys, torch
from uaal_ext.experiment.models import build_model

results = []
for request in json.loads(sys.argv[1]):
    try:
        model = build_model(
            request["name"], 3, dropout=request.get("dropout", 0.1), weights=request.get("weights"),
            encoder_weights=request["encoder_weights"],
        )
    except Exception as error:
        results.append({"error": type(error).__name__, "message": str(error)})
    else:
        torch.save(model.encoder.state_dict(), request["out"])
        results.append({"error": None})
print(json.dumps(results))
"""


@pytest.fixture(autouse=True)
def _hub_offline_in_this_process(monkeypatch, tmp_path):
    """Should a check in this process let a fetch through, it fails on an empty cache instead of
    downloading. huggingface_hub reads these constants at each call."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))


def _distinct_values(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same keys and shapes, float values in [0.5, 1.5): unlike any initialisation (batch-norm
    weights of 1, biases of 0, zero-mean convs), so equal weights mean these were loaded."""
    generator = torch.Generator().manual_seed(0)
    return {
        key: torch.rand(value.shape, generator=generator) + 0.5 if value.is_floating_point() else value.clone()
        for key, value in state.items()
    }


def _put_in_cache(hub_cache: Path, source: EncoderWeightsSource, files: dict[str, object]) -> None:
    """Writes ``files`` (a state_dict -> safetensors, or text) where the hub looks for ``source``'s
    files offline: ``models--ORG--NAME/snapshots/<commit>/<file>``, and for a branch revision
    ``refs/<branch>`` holding the commit. (The hub's own downloads keep the bytes in ``blobs/`` and
    link them from the snapshot; the offline look-up only needs the snapshot path to exist.)"""
    repo = hub_cache / f"models--{source.repo_id.replace('/', '--')}"
    is_commit = len(source.revision) == 40 and all(c in "0123456789abcdef" for c in source.revision)
    commit = source.revision if is_commit else GENERATED_COMMIT
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if not is_commit:
        (repo / "refs").mkdir()
        (repo / "refs" / source.revision).write_text(commit)  # read back as is: no newline
    assert sorted(files) == sorted(source.filenames), "fill exactly the files the source names"
    for filename, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(snapshot / filename))
        else:
            (snapshot / filename).write_text(content)


def _build_offline(requests: list[dict], **hub_variables: str) -> list[dict]:
    """Runs ``build_model`` for each request in a fresh process with HF_HUB_OFFLINE=1 and
    ``hub_variables`` (HF_HOME / HF_HUB_CACHE) instead of the caller's hub settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **hub_variables)
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_IN_CHILD, json.dumps(requests)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == len(requests)
    return results


def _assert_encoder_holds(encoder_file: Path, expected: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Every tensor of the saved encoder equals ``expected``'s under the same key (less ``prefix``):
    a partial load (timm loads MobileNetV3 features non-strictly) fails too."""
    encoder = torch.load(encoder_file, weights_only=True)
    assert encoder, "the encoder has no weights"
    for key, value in encoder.items():
        source_key = key.removeprefix(prefix)
        assert source_key in expected, f"encoder key {key} is not in the checkpoint"
        assert torch.equal(value, expected[source_key]), f"{key} differs from the checkpoint's {source_key}"


# ---------------------------------------------------------------------------------------------------
# Where the weights come from


@pytest.mark.parametrize("name", MODELS)
def test_imagenet_source_of_each_preset(name):
    repo_id, filenames = EXPECTED_SOURCES[name]
    source = encoder_weights_source(name)
    assert (source.repo_id, source.filenames) == (repo_id, filenames)
    assert encoder_weight_names(name)[0] == IMAGENET
    if name == "resnet50":  # smp pins the commit it loads
        pinned = smp.encoders.encoders["resnet50"]["pretrained_settings"]["imagenet"]["revision"]
        assert source.revision == pinned
        assert source.download_command().endswith(f"--revision {pinned}")
    else:  # "imagenet" is timm's default tag, an ImageNet-1k one for every timm preset
        assert source.revision == "main"
        assert source.repo_id.endswith("_in1k")
        assert source.download_command() == f"hf download {repo_id} model.safetensors"


def test_other_weight_names_map_to_their_repos():
    assert "ra4_e3600_r224_in1k" in encoder_weight_names("mobilenetv3")
    tagged = encoder_weights_source("mobilenetv3", "ra4_e3600_r224_in1k")
    assert tagged.repo_id == timm.models.get_pretrained_cfg("mobilenetv3_large_100.ra4_e3600_r224_in1k").hf_hub_id
    assert encoder_weight_names("resnet50") == ("imagenet", "ssl", "swsl")
    assert encoder_weights_source("resnet50", "ssl").repo_id == "smp-hub/resnet50.ssl"


# ---------------------------------------------------------------------------------------------------
# Loading from a pre-filled offline cache


def test_small_loads_its_imagenet_encoder_from_an_offline_cache_via_the_config(tmp_path):
    checkpoint = _distinct_values(timm.create_model("mobilenetv3_small_050").state_dict())  # the full classifier
    hf_home = tmp_path / "hf_home"
    _put_in_cache(hf_home / "hub", encoder_weights_source("small"), {"model.safetensors": checkpoint})
    config = load_config(CONFIGS / "synthetic_demo.yaml", ["encoder_weights=imagenet"])
    assert config.encoder_weights == IMAGENET and config.weights is None

    # What the experiment loop builds from its config (al/loop.py new_model).
    request = dict(
        name=config.model,
        dropout=config.dropout,
        weights=config.weights,
        encoder_weights=config.encoder_weights,
        out=str(tmp_path / "encoder.pt"),
    )
    [result] = _build_offline([request], HF_HOME=str(hf_home))
    assert result["error"] is None, result
    _assert_encoder_holds(tmp_path / "encoder.pt", checkpoint, prefix="model.")


def test_resnet50_loads_smp_imagenet_encoder_from_hf_hub_cache(tmp_path):
    checkpoint = _distinct_values(smp.encoders.get_encoder("resnet50").state_dict())
    hub_cache = tmp_path / "hub_cache"
    files = {"config.json": json.dumps({"architecture": "resnet50"}), "model.safetensors": checkpoint}
    _put_in_cache(hub_cache, encoder_weights_source("resnet50"), files)

    request = dict(name="resnet50", encoder_weights=IMAGENET, out=str(tmp_path / "encoder.pt"))
    [result] = _build_offline([request], HF_HUB_CACHE=str(hub_cache), HF_HOME=str(tmp_path / "unused_home"))
    assert result["error"] is None, result
    _assert_encoder_holds(tmp_path / "encoder.pt", checkpoint)
    assert set(torch.load(tmp_path / "encoder.pt", weights_only=True)) == set(checkpoint)


def test_offline_empty_cache_says_what_to_fetch_and_a_weights_file_needs_no_fetch(tmp_path):
    hf_home = tmp_path / "empty_home"
    whole_model = build_model("small", 3, encoder_weights=None)
    whole_model.load_state_dict(_distinct_values(whole_model.state_dict()))
    weights_file = tmp_path / "whole_model.pt"
    torch.save(whole_model.state_dict(), weights_file)
    requests = [
        dict(name="small", encoder_weights=IMAGENET),
        dict(name="mobilenetv3", encoder_weights="ra4_e3600_r224_in1k"),
        dict(name="resnet50", encoder_weights=IMAGENET),
        dict(name="small", encoder_weights=IMAGENET, weights=str(weights_file), out=str(tmp_path / "encoder.pt")),
    ]
    small, tagged, resnet, overridden = _build_offline(requests, HF_HOME=str(hf_home))

    for result, name, weights in ((small, "small", IMAGENET), (tagged, "mobilenetv3", "ra4_e3600_r224_in1k")):
        assert result["error"] == "OSError", result
        source = encoder_weights_source(name, weights)
        for part in (
            f"encoder_weights={weights!r}",
            repr(source.repo_id),
            f"`{source.download_command()}`",
            "HF_HUB_OFFLINE is set",
            str(hf_home / "hub"),
            "HF_HOME / HF_HUB_CACHE",
            "encoder_weights=None",
        ):
            assert part in result["message"], (part, result["message"])
    assert "'tu-mobilenetv3_small_050'" in small["message"]
    assert resnet["error"] == "OSError" and "'resnet50'" in resnet["message"]
    assert "hf download smp-hub/resnet50.imagenet config.json model.safetensors --revision" in resnet["message"]

    # weights= sets every parameter, so nothing is fetched and the file's values are the model's.
    assert overridden["error"] is None, overridden
    state = whole_model.state_dict()
    encoder_part = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    _assert_encoder_holds(tmp_path / "encoder.pt", encoder_part)


# ---------------------------------------------------------------------------------------------------
# Bad values, checked before anything is fetched


@pytest.mark.parametrize(
    ("name", "encoder_weights", "message"),
    [
        ("small", "", "non-empty str"),
        ("small", True, "non-empty str"),
        ("small", 1, "non-empty str"),
        ("small", ["imagenet"], "non-empty str"),
        ("small", "IMAGENET", "must be None or one of"),
        ("small", "ssl", "must be None or one of"),
        ("resnet50", "ra_in1k", "must be None or one of"),
        ("mobilenetv3", "mobilenetv3_large_100.ra_in1k", "must be None or one of"),
    ],
)
def test_bad_encoder_weights_raise_value_error_naming_the_argument(name, encoder_weights, message):
    with pytest.raises(ValueError, match="encoder_weights") as caught:
        build_model(name, 3, encoder_weights=encoder_weights)
    assert message in str(caught.value)
    with pytest.raises(ValueError, match="encoder_weights"):
        encoder_weights_source(name, encoder_weights)


def test_encoder_weights_source_of_random_init_is_an_error():
    with pytest.raises(ValueError, match="encoder_weights=None"):
        encoder_weights_source("small", None)


# ---------------------------------------------------------------------------------------------------
# The config key


def test_paper_configs_start_from_imagenet_encoders():
    assert len(PAPER_CONFIGS) == 6, PAPER_CONFIGS
    for path in PAPER_CONFIGS:
        config = load_config(path, ["root=/data"])
        assert config.encoder_weights == IMAGENET, path.name
        assert config.weights is None, path.name


def test_demo_and_study_configs_stay_random_init():
    assert len(RANDOM_INIT_CONFIGS) >= 2
    for path in RANDOM_INIT_CONFIGS:
        assert load_config(path).encoder_weights is None, path.name


@pytest.mark.parametrize("value", ["", "ssl", True, 3, ["imagenet"]])
def test_config_rejects_bad_encoder_weights(value):
    with pytest.raises(ValueError, match="config key 'encoder_weights'"):
        ExperimentConfig(encoder_weights=value)


def test_encoder_weights_identify_the_experiment():
    assert "encoder_weights" not in RUNTIME_KEYS
    assert ExperimentConfig(model="resnet50", encoder_weights="ssl").encoder_weights == "ssl"
    random_init, pretrained = ExperimentConfig(), ExperimentConfig(encoder_weights=IMAGENET)
    defaults = ExperimentConfig().to_dict()
    # A resume compares the saved config with today's like this (al/loop.py): a change is refused...
    assert "encoder_weights" in changed_keys(random_init.to_dict(), pretrained.to_dict(), RUNTIME_KEYS, defaults)
    # ...and a state written before the key existed started from random weights, which is null.
    older = {k: v for k, v in random_init.to_dict().items() if k != "encoder_weights"}
    assert changed_keys(older, random_init.to_dict(), RUNTIME_KEYS, defaults) == ""
    assert "encoder_weights" in changed_keys(older, pretrained.to_dict(), RUNTIME_KEYS, defaults)
