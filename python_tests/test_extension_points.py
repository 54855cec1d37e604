"""What a user adds without editing the library: an acquisition method, a dataset and an uncertainty
source, each one class (or one spec) plus its registration, running through the whole driver."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uaal_ext.acquisition import (
    AcquisitionMethod,
    Passes,
    image_scores,
    method_names,
    pixel_scores,
    register_method,
    score_pool,
    select,
    select_from_pool,
)
from uaal_ext.acquisition import base as acquisition_base
from uaal_ext.experiment.al import ExperimentConfig, run_experiment, run_key
from uaal_ext.experiment.data import DatasetSpec, EvalTransform, dataset_names, make_dataset, register_dataset
from uaal_ext.experiment.data import registry as dataset_registry
from uaal_ext.experiment.maps import map_methods, uncertainty_map
from uaal_ext.experiment.report import load_experiments, markdown_tables, summarize
from uaal_ext.experiment.training import TrainConfig, make_criterion, train
from uaal_ext.uncertainty import DropoutRecording, UncertaintySource, register_uncertainty_source
from uaal_ext.uncertainty import base as uncertainty_base

# ---- an acquisition method of the user's ------------------------------------------------------------


class VariationRatio(AcquisitionMethod):
    """1 - the share of T MC-Dropout samples that vote for the most voted class, per pixel."""

    name = "variation_ratio"
    display_name = "Variation ratio"
    passes = Passes(mc_dropout=True)
    default_samples = 6

    def pixel_map(self, predictions):
        votes = predictions.mc_logits.argmax(dim=2)  # (T, N, *spatial)
        agree = (votes == votes.mode(dim=0).values).float().mean(dim=0)
        return 1.0 - agree


@pytest.fixture
def user_method():
    register_method(VariationRatio)
    yield VariationRatio
    acquisition_base.METHODS.remove(VariationRatio.name)  # leave the registry as the other tests expect it


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.5))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.body(x))


def test_user_method_works_everywhere_a_name_does(user_method, tmp_path):
    assert "variation_ratio" in method_names() and "variation_ratio" in map_methods()
    mc_logits = torch.randn(5, 3, 4, 6, 7)
    votes = mc_logits.argmax(dim=2)
    expected = 1 - (votes == votes.mode(dim=0).values).float().mean(dim=0)
    assert torch.equal(pixel_scores("variation_ratio", mc_logits=mc_logits), expected)
    torch.testing.assert_close(image_scores("variation_ratio", mc_logits=mc_logits), expected.mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="mc_logits"):
        pixel_scores("variation_ratio", logits=mc_logits[0])  # its passes say what it reads

    # On a pool: T = default_samples MC passes, per image, keyed by (seed, index) like the built-in ones.
    model = _TinyNet()
    images = torch.randn(9, 3, 6, 7)
    loader = DataLoader(TensorDataset(images, torch.arange(9)), batch_size=4)
    scores = score_pool(model, loader, "variation_ratio", seed=3, progress=False)
    assert sorted(scores) == list(range(9)) and all(0 <= v <= 1 for v in scores.values())
    picked = select_from_pool(model, loader, "variation_ratio", 3, exclude=[0], seed=3, progress=False)
    assert picked == select(scores, 3, exclude=[0])
    assert uncertainty_map(model, images[:2], "variation_ratio", seed=3).shape == (2, 6, 7)


def test_user_method_through_the_experiment_and_report(user_method, tmp_path):
    config = ExperimentConfig(
        pool_size=24,
        val_size=4,
        image_size=(32, 64),
        initial_fraction=0.1,
        budgets=(0.25,),
        iterations=1,
        batch_size=4,
        num_samples=1,
        acquisition_samples=2,
        eval_batch_size=8,
        methods=("random", "variation_ratio"),
        modes=("standard",),
        seeds=(0,),
    )
    state = run_experiment(config, tmp_path, progress=False)
    added = state.runs[run_key(0, "standard", "variation_ratio")].round(1).added
    assert len(added) == 6 - 2 and state.finished
    table = markdown_tables(summarize(load_experiments([tmp_path])))
    assert "Variation ratio" in table  # the report reads the registered display name


def test_registry_refuses_what_it_cannot_name():
    class Clash(AcquisitionMethod):
        name = "entropy"
        passes = Passes(clean=True)

    with pytest.raises(ValueError, match="registered already"):
        register_method(Clash)
    Clash.name = "initial"  # the state's name of round 0
    with pytest.raises(ValueError, match="initial"):
        register_method(Clash)
    with pytest.raises(TypeError, match="AcquisitionMethod"):
        register_method(object)
    with pytest.raises(ValueError, match="clean=True"):
        Passes(kernel_noise=True)
    with pytest.raises(ValueError, match="'methods'.*variation_ratio"):
        ExperimentConfig(methods=("variation_ratio",))  # not registered in this test


# ---- a dataset of the user's ------------------------------------------------------------------------


class Stripes(torch.utils.data.Dataset):
    """Images whose label is which of 3 horizontal bands a pixel lies in, brightness by class."""

    def __init__(self, size, seed, image_size):
        self.size, self.seed, self.image_size = size, seed, image_size
        self.transform = EvalTransform()

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        height, width = self.image_size
        g = torch.Generator().manual_seed(self.seed * 1000 + index)
        label = (torch.arange(height)[:, None] * 3 // height).expand(height, width).clone()
        image = (label[None].float() / 2 + 0.1 * torch.randn(3, height, width, generator=g)).clamp(0, 1)
        return self.transform(image, label)


def _build_stripes(split, *, root, size, seed, image_size):
    return Stripes(size or 8, seed * 10 + {"train": 0, "pool": 1, "val": 2}[split], image_size)


@pytest.fixture
def user_dataset():
    spec = register_dataset(
        DatasetSpec(
            name="stripes",
            class_names=("top", "middle", "bottom"),
            build=_build_stripes,
            display_name="Stripes",
            generated=True,
            eval_size_divisor=1,
        )
    )
    yield spec
    dataset_registry.DATASETS.remove(spec.name)


def test_user_dataset_through_the_experiment(user_dataset, tmp_path):
    assert "stripes" in dataset_names()
    image, label = make_dataset("stripes", "val", size=3, image_size=(32, 32))[0]
    assert image.shape == (3, 32, 32) and set(label.unique().tolist()) == {0, 1, 2}
    config = ExperimentConfig(
        dataset="stripes",
        pool_size=20,
        val_size=4,
        image_size=(32, 32),
        initial_fraction=0.1,
        budgets=(0.2,),
        iterations=2,
        batch_size=2,
        num_samples=1,
        acquisition_samples=2,
        methods=("entropy",),
        modes=("standard",),
        seeds=(0,),
    )
    state = run_experiment(config, tmp_path, progress=False)
    assert state.finished and len(state.results) == 2
    assert all(0 <= row["miou"] <= 1 for row in state.results)
    assert "## Stripes" in markdown_tables(summarize(load_experiments([tmp_path])))


# ---- an uncertainty source of the user's --------------------------------------------------------------


class Confusion(UncertaintySource):
    """1 - the top softmax probability of the training logits; asks for the dropout masks to show that
    the training step hands them to any source that says it uses them."""

    name = "confusion"
    uses_dropout_masks = True
    seen: list = []

    def measure(self, model, images, clean, masks):
        Confusion.seen.append(masks)
        return clean, 1.0 - clean.softmax(dim=1).amax(dim=1)


@pytest.fixture
def user_source():
    register_uncertainty_source(Confusion)
    yield Confusion
    uncertainty_base.SOURCES.remove(Confusion.name)


def test_user_uncertainty_source_trains(user_source):
    torch.manual_seed(0)
    images = torch.randn(8, 3, 8, 8)
    data = TensorDataset(images, images.argmax(dim=1) % 4)
    config = TrainConfig(epochs=1, batch_size=4, mode="uaal", uncertainty="confusion", lr=0.05, channels_last=False)
    criterion, source = make_criterion(config)
    assert isinstance(source, Confusion) and criterion.uncertainty_scale == 1.0
    Confusion.seen.clear()
    result = train(_TinyNet(), data, config, progress=False)
    assert result.steps == 2 and len(Confusion.seen) == 2
    assert all(isinstance(masks, DropoutRecording) and len(masks) == 1 for masks in Confusion.seen)
