"""uaal_ext.uncertainty: kernel-noise, MC-Dropout and entropy uncertainty sources."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import uaal_ext
from uaal_ext.uncertainty import (
    EntropyUncertainty,
    KernelNoise,
    MCDropout,
    MCDropoutUncertainty,
    make_uncertainty,
    uncertainty_source_names,
)

NUM_CLASSES = 4
CONV_LINEAR = {"stem.0.weight", "gate.weight", "body.0.weight", "head.weight"}
NORM = {"stem.1.weight", "body.1.weight"}
MODES = ["train", "eval"]
LOGITS = (2, NUM_CLASSES, 9, 9)  # what SmallNet returns for _images()


class SmallNet(nn.Module):
    """Conv + BatchNorm stem, a linear channel gate, conv + GroupNorm + Dropout2d body, 1x1 head."""

    def __init__(self, dropout=0.2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.gate = nn.Linear(8, 8)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU(), nn.Dropout2d(dropout)
        )
        self.head = nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, x):
        h = self.stem(x)
        h = h * torch.sigmoid(self.gate(h.mean(dim=(2, 3))))[:, :, None, None]
        return self.head(self.body(h))


class ItemNet(SmallNet):
    """Reads a weight with .item(), which vmap cannot batch."""

    def forward(self, x):
        return super().forward(x) / (1.0 + 0.0 * self.head.weight.abs().max().item())


def _model(mode, dropout=0.2):
    model = SmallNet(dropout)
    with torch.no_grad():  # non-trivial running statistics, so eval and train normalise differently
        bn = model.stem[1]
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return model.train(mode == "train")


def _images(n=2, size=9):
    return torch.randn(n, 3, size, size)


def _snapshot(model):
    """Every parameter and buffer (cloned), each module's training flag and BN tracking flag."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    flags = [(m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    return tensors, flags


def _assert_unchanged(model, snapshot):
    tensors, flags = snapshot
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name]), f"{name} changed"
    assert [(m.training, getattr(m, "track_running_stats", None)) for m in model.modules()] == flags


def _statistics_reference(clean, perturbed):
    """sigma and ns of docs/math.md#perturbation-statistics in float64."""
    p = clean.double().softmax(dim=1)
    d = (perturbed.double().softmax(dim=2) - p).norm(dim=2)  # (K, N, *spatial)
    return d.pow(2).mean(dim=0).sqrt(), d.mean(dim=0) / p.norm(dim=1)


def _sequential_reference(model, kn, images):
    """Clean and K perturbed logits from a copy of the model with dropout off, one functional_call per k,
    using the weights kn reports for its last call."""
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, nn.Dropout2d):
            m.eval()
    perturbed = kn.perturbed_parameters(model)
    with torch.no_grad():
        clean = reference(images)
        outputs = torch.stack(
            [
                functional_call(reference, {name: w[k] for name, w in perturbed.items()}, (images,))
                for k in range(kn.num_samples)
            ]
        )
    return clean, outputs


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "filter"])
@pytest.mark.parametrize("mode", MODES)
def test_kernel_noise_matches_sequential_functional_calls(mode, granularity, batched, seed):
    model, images = _model(mode), _images()
    kn = KernelNoise(eta=0.05, num_samples=3, seed=seed, granularity=granularity, batched=batched)
    logits, sigma, ns = kn.scores(model, images)
    clean, outputs = _sequential_reference(model, kn, images)
    expected_sigma, expected_ns = _statistics_reference(clean, outputs)
    torch.testing.assert_close(logits, clean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma.double(), expected_sigma, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ns.double(), expected_ns, rtol=1e-4, atol=1e-6)
    assert sigma.shape == ns.shape == (2, 9, 9) and sigma.max() > 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_batched_chunked_and_sequential_paths_agree(mode, seed):
    model, images = _model(mode), _images()
    results = [
        KernelNoise(eta=0.05, num_samples=5, seed=seed, **options)(model, images)[1]
        for options in (dict(batched=True), dict(batched=True, chunk_size=2), dict(batched=False))
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("granularity", ["tensor", "filter"])
@pytest.mark.parametrize("include", [("conv", "linear"), ("conv", "linear", "norm"), ("norm",)])
def test_perturbed_parameters(include, granularity, seed):
    model, eta, num_samples = _model("eval"), 0.07, 4
    kn = KernelNoise(eta=eta, num_samples=num_samples, seed=seed, include=include, granularity=granularity)
    perturbed = kn.perturbed_parameters(model)
    expected = (CONV_LINEAR if "conv" in include else set()) | (NORM if "norm" in include else set())
    assert set(perturbed) == expected
    params = dict(model.named_parameters())
    assert list(perturbed) == [name for name in params if name in expected]  # named_parameters order
    for name, w in perturbed.items():
        p = params[name].detach()
        assert w.shape == (num_samples,) + p.shape and not w.requires_grad
        noise = (w - p).double()
        if granularity == "tensor":
            norms, target = noise.flatten(1).norm(dim=1), p.double().norm().expand(num_samples)
        else:
            filters = p.shape[0]  # 1-D norm weights: every element is a filter
            norms = noise.reshape(num_samples, filters, -1).norm(dim=2)
            target = p.double().reshape(filters, -1).norm(dim=1).expand(num_samples, -1)
        torch.testing.assert_close(norms, eta * target, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(noise[0], noise[1])  # K different directions


def test_perturbed_parameters_are_those_of_the_last_call(seed):
    model, images = _model("eval"), _images()
    kn = KernelNoise(eta=0.05, seed=seed)
    before_any_call = kn.perturbed_parameters(model)
    kn(model, images)
    first = kn.perturbed_parameters(model)
    kn(model, images)
    second = kn.perturbed_parameters(model)
    for name in first:
        assert torch.equal(before_any_call[name], first[name])
        assert not torch.equal(first[name], second[name])


@pytest.mark.parametrize("mode", MODES)
def test_no_parameter_buffer_or_mode_changes(mode, seed):
    model, images = _model(mode), _images()
    snapshot = _snapshot(model)
    kn = KernelNoise(eta=0.1, seed=seed, include=("conv", "linear", "norm"))
    kn(model, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # dropout in the clean logits (train mode)
        kn(model, images, clean_logits=torch.randn(2, NUM_CLASSES, 9, 9))
    KernelNoise(eta=0.1, seed=seed, batched=False)(model, images)
    MCDropout(num_samples=3, seed=seed)(model, images)
    MCDropout(num_samples=3, seed=seed, chunk_size=2).uncertainty(model, images)
    EntropyUncertainty()(model, images)
    _assert_unchanged(model, snapshot)
    # A plain training forward would change them: the check above can fail.
    if mode == "train":
        model(images)
        with pytest.raises(AssertionError):
            _assert_unchanged(model, snapshot)


@pytest.mark.parametrize("mode", MODES)
def test_perturbed_passes_normalise_like_the_clean_pass(mode, seed):
    model, images = _model(mode, dropout=0.0), _images()
    with torch.no_grad():
        clean = model(images)  # the training (or selection) forward
        other = copy.deepcopy(model).train(mode != "train")(images)
    assert (clean - other).abs().max() > 1e-2  # a mode mismatch would show in sigma
    for clean_logits in (clean, None):
        _, sigma = KernelNoise(eta=0.0, seed=seed)(model, images, clean_logits=clean_logits)
        assert sigma.abs().max() < 1e-5
    means = [KernelNoise(eta=eta, seed=seed)(model, images, clean_logits=clean)[1].mean() for eta in (0.01, 0.05, 0.2)]
    assert 0 < means[0] < means[1] < means[2]


def test_no_autograd_graph(seed):
    model, images = _model("train", dropout=0.0), _images()
    assert all(p.requires_grad for p in model.parameters())
    out = model(images)
    kn = KernelNoise(eta=0.05, seed=seed)
    results = list(kn.scores(model, images)) + list(kn.scores(model, images, clean_logits=out))
    results += list(kn.perturbed_parameters(model).values())
    results += list(EntropyUncertainty()(model, images, clean_logits=out))
    model_with_dropout = _model("train")
    results += [MCDropout(num_samples=2)(model_with_dropout, images)]
    results += list(MCDropoutUncertainty(num_samples=2)(model_with_dropout, images))
    for tensor in results:
        assert not tensor.requires_grad and tensor.grad_fn is None


def test_kernel_noise_determinism_and_state_dict(seed):
    model, images = _model("eval"), _images()
    a, b = KernelNoise(eta=0.05, seed=seed), KernelNoise(eta=0.05, seed=seed)
    first = a(model, images)[1]
    assert torch.equal(first, b(model, images)[1])  # same seed, same call index
    second = a(model, images)[1]
    assert not torch.equal(first, second)  # fresh noise per call
    assert not torch.equal(first, KernelNoise(eta=0.05, seed=seed + 1)(model, images)[1])
    resumed = KernelNoise(eta=0.05, seed=seed)
    resumed.load_state_dict(a.state_dict())
    assert a.state_dict() == {"calls": 2}
    assert torch.equal(a(model, images)[1], resumed(model, images)[1])


def test_vmap_fallback_warns_once_and_matches(seed):
    model, images = ItemNet().eval(), _images()
    kn = KernelNoise(eta=0.05, seed=seed, batched=True)
    with pytest.warns(RuntimeWarning, match="vmap"):
        sigma = kn(model, images)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kn(model, images)  # remembered: no second warning
    torch.testing.assert_close(sigma, KernelNoise(eta=0.05, seed=seed, batched=False)(model, images)[1])


def test_clean_logits_with_active_dropout_warns_once(seed):
    model, images = _model("train"), _images()
    kn = KernelNoise(eta=0.05, seed=seed)
    with pytest.warns(RuntimeWarning, match="dropout"):
        kn(model, images, clean_logits=model(images).detach())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kn(model, images, clean_logits=model(images).detach())
        kn(model.eval(), images, clean_logits=model(images).detach())


def test_mc_dropout_samples(seed):
    model, images, T = _model("train"), _images(), 6
    rng_state = torch.get_rng_state()
    snapshot = _snapshot(model)
    samples = MCDropout(num_samples=T, seed=seed)(model, images)
    assert torch.equal(torch.get_rng_state(), rng_state)
    _assert_unchanged(model, snapshot)
    assert samples.shape == (T, 2, NUM_CLASSES, 9, 9) and not samples.requires_grad
    assert all(not torch.equal(samples[0], samples[t]) for t in range(1, T))
    # Dropout in training mode, everything else (BN: running statistics) in eval mode, one forward.
    reference = copy.deepcopy(model).eval()
    reference.body[3].train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        expected = reference(images.repeat(T, 1, 1, 1)).reshape(T, 2, NUM_CLASSES, 9, 9)
    torch.testing.assert_close(samples, expected)
    # Same seed and call index: same samples; the next call: new ones; chunking keeps the shape.
    mc = MCDropout(num_samples=T, seed=seed)
    assert torch.equal(mc(model, images), samples)
    assert not torch.equal(mc(model, images), samples)
    resumed = MCDropout(num_samples=T, seed=seed)
    resumed.load_state_dict(mc.state_dict())
    assert torch.equal(mc(model, images), resumed(model, images))
    chunked = MCDropout(num_samples=5, seed=seed, chunk_size=2)(model, images)
    assert chunked.shape == (5, 2, NUM_CLASSES, 9, 9)


def test_mc_dropout_uncertainty(seed):
    model, images = _model("eval"), _images()
    mean, std = MCDropout(num_samples=5, seed=seed).uncertainty(model, images)
    probabilities = MCDropout(num_samples=5, seed=seed)(model, images).softmax(dim=2)
    torch.testing.assert_close(mean, probabilities.mean(dim=0))
    expected = (probabilities - probabilities.mean(dim=0)).norm(dim=2).pow(2).mean(dim=0).sqrt()
    torch.testing.assert_close(std, expected)
    assert std.shape == (2, 9, 9) and (std >= 0).all() and std.max() > 0
    logits, source_std = MCDropoutUncertainty(num_samples=5, seed=seed)(model, images)
    torch.testing.assert_close(logits.softmax(dim=1), mean)
    torch.testing.assert_close(source_std, std)


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="dropout"):
        MCDropout()(nn.Conv2d(3, NUM_CLASSES, 1), _images())
    with pytest.raises(ValueError, match="dropout"):
        MCDropout()(SmallNet(dropout=0.0), _images())


def test_entropy_source(seed):
    model, images = _model("eval"), _images()
    source = make_uncertainty("entropy")
    logits, entropy = source(model, images)
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(logits, expected)
    probabilities = expected.double().softmax(dim=1)
    reference = -(probabilities * probabilities.log()).sum(dim=1) / math.log(NUM_CLASSES)
    torch.testing.assert_close(entropy.double(), reference, rtol=1e-5, atol=1e-6)
    assert source.uncertainty_scale == 1.0
    assert torch.equal(source(model, images, clean_logits=expected)[1], entropy)


@pytest.mark.parametrize("name", uncertainty_source_names())
def test_make_uncertainty(name, seed):
    model, images = _model("eval"), _images()
    options = {"kernel_noise": dict(eta=0.03, num_samples=2), "entropy": {}, "mc_dropout": dict(num_samples=3)}[name]
    source = make_uncertainty(name, **options)
    logits, uncertainty = source(model, images)
    assert logits.shape == (2, NUM_CLASSES, 9, 9) and uncertainty.shape == (2, 9, 9)
    assert source.uncertainty_scale == (0.03 if name == "kernel_noise" else 1.0)
    clean = torch.randn(2, NUM_CLASSES, 9, 9)
    assert torch.equal(source(model, images, clean_logits=clean)[0], clean)


def _training_step(model, images, target, kn):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    out = model(images)
    _, sigma = kn(model, images, clean_logits=out.detach())
    loss = uaal_ext.UAALLoss(uncertainty_scale=kn.eta)(out, target, uncertainty=sigma)
    assert loss > F.cross_entropy(out, target)  # the weights 1 + (sigma / eta)^2 are in use
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    return sigma


def test_training_step_with_uaal_loss(seed):
    model, images = _model("train", dropout=0.0), _images(4, 16)
    target = torch.randint(0, NUM_CLASSES, (4, 16, 16))
    sigma = _training_step(model, images, target, KernelNoise(eta=0.05, seed=seed))
    assert sigma.shape == target.shape and sigma.max() > 0


@pytest.mark.parametrize("mode", MODES)
def test_deeplabv3plus(mode, seed):
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.DeepLabV3Plus("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=32, classes=3)
    model.train(mode == "train")
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    snapshot = _snapshot(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = KernelNoise(eta=0.02, num_samples=3, seed=seed, batched=True)(model, images)[1]
        sequential = KernelNoise(eta=0.02, num_samples=3, seed=seed, batched=False)(model, images)[1]
    assert not [w for w in caught if "vmap" in str(w.message)]  # the batched path runs on smp models
    torch.testing.assert_close(batched, sequential, rtol=1e-4, atol=1e-6)
    assert batched.shape == (2, 64, 64) and batched.max() > 0
    _assert_unchanged(model, snapshot)
    if mode == "train":  # ASPP dropout is active in the training forward: the glue warns about it
        with pytest.warns(RuntimeWarning, match="dropout"):
            _training_step(model, images, target, KernelNoise(eta=0.02, num_samples=3, seed=seed))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: KernelNoise(eta=-0.1), "eta"),
        (lambda: KernelNoise(eta=float("nan")), "eta"),
        (lambda: KernelNoise(eta=float("inf")), "eta"),
        (lambda: KernelNoise(num_samples=0), "num_samples"),
        (lambda: KernelNoise(granularity="channel"), "granularity"),
        (lambda: KernelNoise(chunk_size=0), "chunk_size"),
        (lambda: KernelNoise(include=("conv", "attention")), "include"),
        (lambda: KernelNoise(include=()), "include"),
        (lambda: KernelNoise(seed=-1), "seed"),
        (lambda: MCDropout(num_samples=0), "num_samples"),
        (lambda: MCDropout(chunk_size=0), "chunk_size"),
        (lambda: make_uncertainty("ensemble"), "name"),
        (lambda: KernelNoise().load_state_dict({"calls": -1}), "state"),
    ],
)
def test_bad_options(build, match):
    with pytest.raises(ValueError, match=match):
        build()


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, x: KernelNoise()(m, x.long()), TypeError, "images"),
        (lambda m, x: KernelNoise()(m, x, clean_logits=torch.randn(3, *LOGITS[1:])), ValueError, "clean_logits"),
        (lambda m, x: KernelNoise()(m, x, clean_logits=torch.randn(2, 5, 9, 9)), ValueError, "clean_logits"),
        (lambda m, x: KernelNoise()(m, x, clean_logits=torch.randn(2, NUM_CLASSES, 9, 8)), ValueError, "clean_logits"),
        (lambda m, x: KernelNoise()(m, x, clean_logits=[1.0]), TypeError, "clean_logits"),
        (lambda m, x: KernelNoise()(nn.Sequential(nn.BatchNorm2d(3)), x), ValueError, "include"),
        (lambda m, x: KernelNoise()(DictNet(), x), TypeError, "dict"),
        (lambda m, x: KernelNoise(batched=False)(DictNet(), x), TypeError, "dict"),
        (lambda m, x: MCDropout()(m, x.int()), TypeError, "images"),
        (lambda m, x: EntropyUncertainty()(m, x.long()), TypeError, "images"),
        (lambda m, x: MCDropoutUncertainty()(m, x, clean_logits=torch.randn(2, 5, 9, 9)), ValueError, "clean_logits"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(_model("eval"), _images())


def test_dropout_state_replays_the_clean_forwards_masks(seed):
    """With the generator state of the training forward, the perturbed passes draw its very dropout
    masks: at eta = 0 sigma is exactly 0 although dropout is active, and the generator ends where
    the training forward left it."""
    from uaal_ext.uncertainty import rng_state

    model, images = _model("train"), _images()
    state = rng_state(images.device)
    out = model(images)
    after_forward = rng_state(images.device)
    _, sigma = KernelNoise(eta=0.0, num_samples=3, seed=seed)(
        model, images, clean_logits=out.detach(), dropout_state=state
    )
    assert torch.equal(sigma, torch.zeros_like(sigma))
    assert torch.equal(rng_state(images.device), after_forward)
    # Without the state, the dropout-free passes differ from the dropout forward.
    with pytest.warns(RuntimeWarning, match="dropout"):
        _, unmatched = KernelNoise(eta=0.0, num_samples=3, seed=seed)(model, images, clean_logits=out.detach())
    assert unmatched.max() > 0
    # A perturbation shows up on top of the replayed masks.
    state = rng_state(images.device)
    out = model(images)
    _, perturbed = KernelNoise(eta=0.05, num_samples=3, seed=seed)(
        model, images, clean_logits=out.detach(), dropout_state=state
    )
    assert perturbed.max() > 0
    with pytest.raises(ValueError, match="dropout_state"):
        KernelNoise(eta=0.05, seed=seed)(model, images, dropout_state=state)


def test_channels_last_model_gets_channels_last_perturbed_weights(seed):
    """A channels-last model's perturbed conv weights keep its layout (else every perturbed conv
    converts layouts), with the same values and the same sigma as the contiguous model."""
    model, images = _model("eval"), _images()
    sigma = KernelNoise(eta=0.05, num_samples=2, seed=seed)(model, images)[1]
    model_cl = model.to(memory_format=torch.channels_last)
    kn = KernelNoise(eta=0.05, num_samples=2, seed=seed)
    sigma_cl = kn(model_cl, images.contiguous(memory_format=torch.channels_last))[1]
    torch.testing.assert_close(sigma_cl, sigma, rtol=1e-4, atol=1e-6)
    weights = dict(model_cl.named_parameters())
    for name, stack in kn.perturbed_parameters(model_cl).items():
        assert stack[1].stride() == weights[name].stride(), name  # 1x1 kernels too, size-1 dims included
        if stack.dim() == 5:
            assert stack[0].is_contiguous(memory_format=torch.channels_last), name
