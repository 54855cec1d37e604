"""uaal_ext.record_dropout: a forward's dropout masks, reused by KernelNoise's perturbed passes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from uaal_ext import KernelNoise, UAALLoss, record_dropout
from uaal_ext.ops.reference import perturbation_statistics_reference
from uaal_ext.uncertainty import DropoutRecording, rng_state

NUM_CLASSES = 5


class DropoutNet(nn.Module):
    """Every kind of dropout: recorded (Dropout, Dropout2d, a module used twice) and not recorded
    (AlphaDropout, functional dropout), so the generator replay must cover the latter."""

    def __init__(self, p=0.3):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.shared = nn.Dropout(p)
        self.channels = nn.Dropout2d(p)
        self.alpha = nn.AlphaDropout(p)
        self.head = nn.Conv2d(6, NUM_CLASSES, 1)

    def forward(self, x):
        h = self.shared(torch.relu(self.stem(x)))
        h = self.channels(h)
        h = self.alpha(h)
        h = F.dropout(h, 0.2, self.training)
        return self.head(self.shared(h))


def _images(n=3, h=7, w=6):
    return torch.randn(n, 3, h, w)


def test_masks_are_dropout_masks(seed):
    """Element-wise masks for Dropout, one value per (sample, channel) for Dropout2d, values 0 or
    1/(1-p), in call order; the output is the input times the mask (checked on a lone module)."""
    torch.manual_seed(seed)
    p = 0.4
    model = DropoutNet(p).train()
    with record_dropout(model) as rec:
        model(_images())
    assert [m.shape for m in rec.masks[model.shared]] == [(3, 6, 7, 6)] * 2
    assert [m.shape for m in rec.masks[model.channels]] == [(3, 6, 1, 1)]
    assert model.alpha not in rec.masks  # AlphaDropout draws from the global generator
    assert len(rec) == 3
    for mask in rec.masks[model.shared] + rec.masks[model.channels]:
        scale = torch.tensor(1 / (1 - p))
        assert torch.all((mask == 0) | (mask == scale))
    drop = nn.Dropout(p).train()
    x = torch.randn(1000, 20)
    with record_dropout(drop) as rec:
        y = drop(x)
    mask = rec.masks[drop][0]
    assert torch.equal(y, x * mask)
    assert abs((mask == 0).float().mean().item() - p) < 0.02  # 20000 draws: the rate is p


def test_recording_leaves_the_modules_as_they_were(seed):
    model = DropoutNet().train()
    with pytest.raises(ZeroDivisionError):
        with record_dropout(model):
            raise ZeroDivisionError
    assert all("forward" not in m.__dict__ for m in model.modules())
    with record_dropout(model) as rec:
        model(_images())
    with rec.replaying(model):
        assert "forward" in model.shared.__dict__
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_eval_mode_and_p0_record_nothing(seed):
    model = DropoutNet(p=0.0).train()
    with record_dropout(model) as rec:
        model(_images())
    assert len(rec) == 0 and rec.masks[model.shared] == [None, None]
    model = DropoutNet().eval()
    x = _images()
    with record_dropout(model) as rec:
        out = model(x)
    assert len(rec) == 0
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)


def test_p1_drops_everything():
    drop = nn.Dropout(1.0).train()
    with record_dropout(drop) as rec:
        y = drop(torch.randn(4, 4))
    assert torch.equal(y, torch.zeros(4, 4)) and torch.equal(rec.masks[drop][0], torch.zeros(4, 4))


def test_kernel_noise_with_recorded_masks_repeats_the_clean_forward(seed):
    """At eta = 0 the replayed passes reproduce the training forward bit for bit (recorded masks,
    AlphaDropout and functional dropout through the generator state), so sigma is exactly 0, and
    the generator ends where the forward left it."""
    torch.manual_seed(seed)
    model, images = DropoutNet().train(), _images()
    with record_dropout(model) as rec:
        out = model(images)
    after_forward = rng_state(images.device)
    _, sigma = KernelNoise(eta=0.0, num_samples=3, seed=seed)(model, images, clean_logits=out, dropout_masks=rec)
    assert torch.equal(sigma, torch.zeros_like(sigma))
    assert torch.equal(rng_state(images.device), after_forward)


def test_kernel_noise_with_recorded_masks_matches_a_manual_computation(seed):
    """sigma and ns equal the reference statistics of passes computed by hand: perturbed weights,
    the recorded masks multiplied in at the dropout's place."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(8, NUM_CLASSES, 1)
    ).train()
    images = _images()
    with record_dropout(model) as rec:
        out = model(images)
    kn = KernelNoise(eta=0.05, num_samples=4, seed=seed)
    _, sigma, ns = kn.scores(model, images, clean_logits=out, dropout_masks=rec)
    weights = kn.perturbed_parameters(model)
    mask = rec.masks[model[2]][0]
    passes = []
    for k in range(4):
        params = {name: weights[name][k] if name in weights else p for name, p in model.named_parameters()}
        h = torch.relu(F.conv2d(images, params["0.weight"], params["0.bias"], padding=1)) * mask
        passes.append(F.conv2d(h, params["3.weight"], params["3.bias"]))
    ref_sigma, ref_ns = perturbation_statistics_reference(out.detach(), torch.stack(passes))
    torch.testing.assert_close(sigma, ref_sigma.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ns, ref_ns.float(), rtol=1e-4, atol=1e-6)
    assert sigma.max() > 0
    # functional_call with the same weights under the recording gives the same passes.
    with rec.replaying(model):
        first = functional_call(model, {n: w[0] for n, w in weights.items()}, (images,))
    torch.testing.assert_close(first, passes[0], rtol=1e-5, atol=1e-6)


def test_train_step_replays_the_masks(seed):
    """train_step's kernel-noise step records the forward's masks: at eta = 0 the uncertainty it
    hands the loss is exactly 0 although dropout is active."""
    from uaal_ext.experiment.training import train_step

    seen = []

    class Spy(KernelNoise):
        def scores(self, *args, **kwargs):
            result = super().scores(*args, **kwargs)
            seen.append((kwargs.get("dropout_masks"), result[1]))
            return result

    torch.manual_seed(seed)
    model = DropoutNet().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = UAALLoss(alpha=1.0, uncertainty_scale=1.0)
    labels = torch.randint(0, NUM_CLASSES, (3, 7, 6))
    train_step(model, (_images(), labels), criterion, optimizer, Spy(eta=0.0, num_samples=2, seed=seed))
    ((masks, sigma),) = seen
    assert isinstance(masks, DropoutRecording) and len(masks) == 3
    assert torch.equal(sigma, torch.zeros_like(sigma))


def test_replay_errors_name_the_module(seed):
    model = DropoutNet().train()
    with record_dropout(model) as rec:
        model(_images())
    h = torch.randn(3, 6, 7, 6)
    with rec.replaying(model):
        model.shared(h)
        model.shared(h)  # it ran twice in the recorded forward
        with pytest.raises(RuntimeError, match="'shared' ran 3 times"):
            model.shared(h)
    with rec.replaying(model), pytest.raises(RuntimeError, match="'channels' got input of shape"):
        model.channels(torch.randn(2, 6, 7, 6))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dropout_masks": "masks"}, TypeError, "dropout_masks must be what record_dropout"),
        ({"dropout_masks": "recording", "dropout_state": "state"}, ValueError, "not both"),
        ({"dropout_masks": "recording", "clean_logits": None}, ValueError, "dropout_masks replays"),
        ({"dropout_masks": "meta"}, ValueError, "recorded for a forward on meta"),
    ],
)
def test_bad_replay_arguments(kwargs, error, match, seed):
    model, images = DropoutNet().train(), _images()
    with record_dropout(model) as rec:
        out = model(images)
    values = {"recording": rec, "state": rng_state(images.device), "masks": [rec]}
    call = {"clean_logits": out}
    for key, value in kwargs.items():
        if value == "meta":
            value = DropoutRecording(torch.device("meta"), seed=0)
        call[key] = values.get(value, value) if isinstance(value, str) else value
    with pytest.raises(error, match=match):
        KernelNoise(eta=0.01, num_samples=2)(model, images, **call)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        with record_dropout("model"):
            pass
