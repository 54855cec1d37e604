"""uaal_ext.experiment.maps: uncertainty maps (against plain-torch / reference computations of the same
passes), the standard-vs-UAAL figure, and the figure of a real tiny experiment."""

import json
import os

import pytest
import torch

from uaal_ext.acquisition import method_names
from uaal_ext.acquisition.selection import image_key
from uaal_ext.experiment import maps as maps_module
from uaal_ext.experiment.al import ExperimentConfig, build_datasets, load_round_model, load_state, run_experiment
from uaal_ext.experiment.maps import draw_uncertainty_maps, experiment_maps, map_methods, uncertainty_map
from uaal_ext.experiment.models import build_model
from uaal_ext.ops.reference import pixel_scores_reference
from uaal_ext.uncertainty import KernelNoise, MCDropout

PNG = b"\x89PNG\r\n\x1a\n"
MAP_METHODS = (
    "entropy",
    "margin",
    "least_confidence",
    "mc_entropy",
    "bald",
    "noise_stability",
    "noise_stability_kcenter",
)


def _tiny_model_and_images(seed=0):
    torch.manual_seed(seed)
    model = build_model("small", num_classes=10)
    images = torch.randn(2, 3, 32, 64)
    return model, images


def _snapshot(model):
    return {name: t.detach().clone() for name, t in list(model.named_parameters()) + list(model.named_buffers())}


def _expected(model, images, method, num_samples, eta, seed):
    """The map computed directly from the pieces, in float64 where the math is plain torch."""
    model.eval()
    with torch.no_grad():
        if method in ("entropy", "margin", "least_confidence"):
            p = torch.softmax(model(images).double(), dim=1)
            if method == "entropy":
                return -(p * p.log()).sum(dim=1)
            top = p.topk(2, dim=1).values
            return 1 - top[:, 0] if method == "least_confidence" else 1 - (top[:, 0] - top[:, 1])
        if method in ("mc_entropy", "bald"):
            # Each image on its own, its masks keyed by (seed, index) as selection keys them.
            mc_logits = torch.cat(
                [
                    MCDropout(num_samples=num_samples, seed=image_key(seed, i) >> 1)(model, images[i : i + 1])
                    for i in range(images.shape[0])
                ],
                dim=1,
            )
            return pixel_scores_reference(method, mc_logits.double())
        return KernelNoise(eta=eta, num_samples=num_samples, seed=seed).scores(model, images)[2].double()


@pytest.mark.parametrize("method", MAP_METHODS)
def test_uncertainty_map_equals_the_underlying_computation(method):
    model, images = _tiny_model_and_images()
    model.train()
    model.segmentation_head.eval()  # a mixed set of flags, each to be restored as it was
    flags = {name: m.training for name, m in model.named_modules()}
    before = _snapshot(model)

    got = uncertainty_map(model, images, method, num_samples=3, eta=0.05, seed=7)

    assert got.shape == (2, 32, 64) and got.dtype == torch.float32 and got.device.type == "cpu"
    assert not got.requires_grad and bool(torch.isfinite(got).all())
    assert {name: m.training for name, m in model.named_modules()} == flags
    after = _snapshot(model)
    assert all(torch.equal(before[name], after[name]) for name in before), "a parameter or buffer changed"

    expected = _expected(model, images, method, num_samples=3, eta=0.05, seed=7)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    assert float(got.std()) > 0  # a map, not a constant


@pytest.mark.parametrize("method, samples", [("mc_entropy", 10), ("bald", 10), ("noise_stability", 5)])
def test_default_sample_counts_and_seed(method, samples):
    model, images = _tiny_model_and_images(1)
    got = uncertainty_map(model, images, method, seed=3)
    torch.testing.assert_close(got.double(), _expected(model, images, method, samples, 0.01, 3), rtol=1e-4, atol=1e-6)
    other_seed = uncertainty_map(model, images, method, seed=4)
    assert not torch.allclose(got, other_seed)  # the seed keys the dropout masks / kernel noise


def test_noise_stability_grows_with_eta_and_kcenter_shares_its_map():
    model, images = _tiny_model_and_images(2)
    small = uncertainty_map(model, images, "noise_stability", num_samples=2, eta=0.001)
    large = uncertainty_map(model, images, "noise_stability", num_samples=2, eta=0.1)
    assert float(large.mean()) > 10 * float(small.mean())
    torch.testing.assert_close(uncertainty_map(model, images, "noise_stability_kcenter", num_samples=2, eta=0.1), large)


def test_random_and_unknown_methods_raise():
    model, images = _tiny_model_and_images()
    with pytest.raises(ValueError, match="'random' has no uncertainty map"):
        uncertainty_map(model, images, "random")
    with pytest.raises(ValueError, match="'coreset'") as error:
        uncertainty_map(model, images, "coreset")
    assert str(method_names()) in str(error.value)
    assert map_methods() == MAP_METHODS
    with pytest.raises(TypeError, match=r"\(N, 3, H, W\)"):
        uncertainty_map(model, images[0], "entropy")


def _figure_inputs(num_images=2, methods=("entropy", "bald"), modes=("uaal", "standard")):
    torch.manual_seed(0)
    images = torch.randn(num_images, 3, 32, 64)
    labels = torch.randint(0, 10, (num_images, 32, 64))
    labels[:, :3] = 255
    maps = {
        (method, mode): torch.rand(num_images, 32, 64) * (2 if mode == "standard" else 1)
        for method in methods
        for mode in modes
    }
    return images, labels, maps


def test_draw_uncertainty_maps_writes_a_png(tmp_path):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    images, labels, maps = _figure_inputs()
    maps[("entropy", "standard")][0, 0, 0] = float("nan")  # drawn grey, not an error
    path = tmp_path / "new" / "folder" / "maps.png"
    returned = draw_uncertainty_maps(
        images, labels, maps, path, class_names=[f"c{i}" for i in range(10)], title="two images"
    )
    assert returned == os.fspath(path)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    assert plt.get_fignums() == open_before  # no figure left open

    one_mode = {key: value for key, value in maps.items() if key[1] == "uaal"}
    assert draw_uncertainty_maps(images, labels, one_mode, tmp_path / "uaal.png").endswith("uaal.png")
    assert (tmp_path / "uaal.png").read_bytes()[:8] == PNG


def test_draw_uncertainty_maps_rejects_bad_inputs(tmp_path):
    images, labels, maps = _figure_inputs()
    maps[("bald", "uaal")] = torch.rand(2, 16, 64)
    with pytest.raises(ValueError, match=r"maps\[\('bald', 'uaal'\)\].*\(2, 16, 64\)"):
        draw_uncertainty_maps(images, labels, maps, tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels must be"):
        draw_uncertainty_maps(images, labels.float(), {}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty"):
        draw_uncertainty_maps(images, labels, {}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------------
# A real tiny experiment


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("maps_experiment")
    config = ExperimentConfig(
        pool_size=40,
        val_size=4,
        image_size=(32, 64),
        methods=("random", "entropy", "mc_entropy"),
        modes=("standard", "uaal"),
        seeds=(0,),
        budgets=(0.1, 0.2),
        initial_fraction=0.05,
        iterations=2,
        batch_size=4,
        num_samples=1,
        acquisition_samples=2,
        eval_batch_size=4,
    )
    run_experiment(config, out, progress=False)
    return config, out


def test_experiment_maps_draws_the_experiments_models(experiment, tmp_path, monkeypatch):
    config, out = experiment
    drawn = {}

    def capture(images, labels, maps, path, **options):
        drawn.update(images=images, labels=labels, maps=maps, **options)
        return os.fspath(path)

    monkeypatch.setattr(maps_module, "draw_uncertainty_maps", capture)
    experiment_maps(out, tmp_path / "maps.png", images=(3, 1), progress=False)

    val = build_datasets(config).val
    torch.testing.assert_close(drawn["images"], torch.stack([val[3][0], val[1][0]]))
    assert torch.equal(drawn["labels"], torch.stack([val[3][1], val[1][1]]))
    assert list(drawn["maps"]) == [
        ("entropy", "standard"),
        ("entropy", "uaal"),
        ("mc_entropy", "standard"),
        ("mc_entropy", "uaal"),
    ]
    assert "round 2" in drawn["title"] and drawn["class_names"][0] == "road"
    state = load_state(out)
    for (method, mode), got in drawn["maps"].items():
        model = load_round_model(out, 0, mode, method, state=state)
        expected = uncertainty_map(
            model,
            drawn["images"],
            method,
            num_samples=config.acquisition_samples,
            eta=config.eta,
            seed=0,
            indices=(3, 1),
        )
        torch.testing.assert_close(got, expected)
    # The two training modes give different models, so different maps.
    assert not torch.allclose(drawn["maps"][("entropy", "standard")], drawn["maps"][("entropy", "uaal")])


def test_experiment_maps_writes_a_png(experiment, tmp_path):
    _, out = experiment
    path = experiment_maps(
        out, tmp_path / "figures" / "maps.png", methods=["mc_entropy"], round_index=1, progress=False
    )
    assert path == os.fspath(tmp_path / "figures" / "maps.png")
    with open(path, "rb") as file:
        assert file.read(8) == PNG


def test_experiment_maps_rejects_bad_requests(experiment, tmp_path):
    _, out = experiment
    target = tmp_path / "never.png"
    with pytest.raises(IndexError, match=r"index 4 .* 4 images"):
        experiment_maps(out, target, images=(0, 4), progress=False)
    with pytest.raises(ValueError, match=r"'bald' is not a method .*\['entropy', 'mc_entropy'\]"):
        experiment_maps(out, target, methods=("entropy", "bald"), progress=False)
    with pytest.raises(ValueError, match="'random' has no uncertainty map"):
        experiment_maps(out, target, methods=("random",), progress=False)
    with pytest.raises(ValueError, match="round_index must be an int >= -1"):
        experiment_maps(out, target, round_index=-2, progress=False)
    with pytest.raises(ValueError, match=r"seed 5 .*\[0\]"):
        experiment_maps(out, target, seed=5, progress=False)
    assert not target.exists()

    # An experiment that only ran "random" has nothing to map.
    state = load_state(out)
    state.config["methods"] = ["random"]
    only_random = tmp_path / "only_random"
    only_random.mkdir()
    (only_random / "state.json").write_text(json.dumps(state.to_json()))
    with pytest.raises(ValueError, match=r"only ran methods without an uncertainty map \(\['random'\]\)"):
        experiment_maps(only_random, target, progress=False)
