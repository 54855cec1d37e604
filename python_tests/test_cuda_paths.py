"""The CUDA paths a reading of the launchers called for tests of: float16 autocast (the loss's dtype,
the gradient under a GradScaler's scale), narrow target dtypes, the gradient's channels-last layout,
the group-of-lanes kernels that read channels-last logits, empty and > 2^31-element inputs, the
current stream, tensors on another device, dropout replay on a CUDA generator, CPU/CUDA parity on
non-finite logits. Most run on the CPU too (DEVICES)."""

import pytest
import torch
import torch.nn.functional as F
from testing import DEVICES, assert_close, cuda_only, random_logits, random_target
from torch import nn

import uaal_ext
from uaal_ext import KernelNoise, record_dropout
from uaal_ext.loss import normalize_uncertainty
from uaal_ext.ops import aggregate_scores, kernel_noise, perturbation_statistics, pixel_entropy, pixel_score_map
from uaal_ext.ops.reference import pixel_entropy_reference, uaal_cross_entropy_reference
from uaal_ext.uncertainty import rng_state

ops = torch.ops.uaal_ext
# ignore_index, label_smoothing, alpha, exponent, inv_scale, s_max
CE_SCALARS = (-100, 0.0, 1.0, 2.0, 1.0, float("inf"))


def _all_ops(x, y):
    """Every op's outputs for logits x (N, C, *spatial) and targets y."""
    loss, logz, sums = ops.cross_entropy_forward(x, y, None, None, *CE_SCALARS, False)
    grad = ops.cross_entropy_backward(torch.ones_like(loss), x, y, logz, None, None, *CE_SCALARS)
    fused_loss, fused_grad = ops.cross_entropy_forward_backward(x, y, None, None, *CE_SCALARS, 2)
    entropy = ops.pixel_entropy(x, True)
    entropy_grad = ops.pixel_entropy_backward(torch.ones_like(entropy), x, True)
    perturbed = torch.stack([x, x + 0.01 * torch.sin(x), x.flip(1)])
    sigma, ns = ops.perturbation_statistics(x, perturbed)
    scores = [ops.pixel_scores(x, m) for m in ("entropy", "margin", "least_confidence")]
    scores += [ops.pixel_scores(perturbed, m) for m in ("mc_entropy", "bald")]
    valid = y != -100
    aggregates = [ops.aggregate_scores(scores[0], valid, r, 0.25) for r in ("mean", "sum", "max", "topk_mean")]
    return [loss, logz, sums, grad, fused_loss, fused_grad, entropy, entropy_grad, sigma, ns, *scores, *aggregates]


# --- 1. float16 autocast -----------------------------------------------------------------------------


@cuda_only
@pytest.mark.parametrize("normalize_by_weight", [False, True])
def test_autocast_float16_training_gradient(normalize_by_weight, seed):
    """Under float16 autocast with GradScaler's initial scale, a mean over 2^18 pixels keeps the
    logits' gradient finite and float16-accurate (no flush of 1/(N H W)-sized entries to zero)."""
    conv = nn.Conv2d(3, 19, 1).cuda().to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
    target = random_target((4, 256, 256), 19, ignore_index=255).cuda()
    kwargs = dict(ignore_index=255, alpha=1.0, normalize_by_weight=normalize_by_weight)
    with torch.autocast("cuda", dtype=torch.float16):
        logits = conv(images)
        logits.retain_grad()
        loss = uaal_ext.uaal_cross_entropy(logits, target, **kwargs)
    assert logits.dtype == torch.float16 and logits.is_contiguous(memory_format=torch.channels_last)
    assert loss.dtype == torch.float32  # what torch's autocast cross_entropy returns
    scale = 2.0**16  # GradScaler's initial scale
    (loss * scale).backward()
    assert torch.isfinite(logits.grad).all()
    x64 = logits.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(uaal_cross_entropy_reference(x64, target, **kwargs) * scale, x64)
    flushed = ((logits.grad == 0) & (expected != 0)).double().mean().item()
    assert flushed < 0.1
    assert ((logits.grad.double() - expected).norm() / expected.norm()).item() < 2e-3


@pytest.mark.parametrize("device", DEVICES)
def test_mean_normalisation_of_a_float16_map_does_not_overflow(device):
    u = torch.full((4, 256, 256), 0.5, dtype=torch.float16, device=device)  # sum 2^17 > 65504
    target = torch.zeros(4, 256, 256, dtype=torch.long, device=device)
    out = normalize_uncertainty(u, target, -100, "mean")
    torch.testing.assert_close(out.float(), torch.ones(out.shape, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32])
def test_narrow_targets_with_an_ignore_index_they_cannot_hold(device, target_dtype, seed):
    """uint8 156 equals -100 and int32 0 equals 2^32 only after wrapping: both are classes here."""
    C = 160
    x = random_logits((2, C, 5, 6)).float().to(device)
    y = random_target((2, 5, 6), C, dtype=target_dtype).to(device)
    ignore = -100 if target_dtype == torch.uint8 else 2**32
    y.view(-1)[::3] = 156 if target_dtype == torch.uint8 else 0
    for kwargs in (dict(), dict(normalize_by_weight=True), dict(weight=torch.rand(C, device=device) + 0.5)):
        x32 = x.clone().requires_grad_()
        loss = uaal_ext.uaal_cross_entropy(x32, y, ignore_index=ignore, **kwargs)  # fused: denominator pre-pass
        loss.backward()
        x64 = x.double().requires_grad_()
        ref_kwargs = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        expected = uaal_cross_entropy_reference(x64, y, ignore_index=ignore, **ref_kwargs)
        expected.backward()
        assert_close(loss, expected, torch.float32)
        assert_close(x32.grad, x64.grad, torch.float32, unit=x64.grad.abs().max().item())


# --- 2. channels-last --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_channels_last_gradients_keep_the_layout(device, dtype, seed):
    x = random_logits((2, 5, 7, 9)).to(device, dtype).contiguous(memory_format=torch.channels_last)
    y = random_target((2, 7, 9), 5, ignore_index=-100).to(device)
    loss, logz, _ = ops.cross_entropy_forward(x, y, None, None, *CE_SCALARS, False)
    grads = {
        "backward": ops.cross_entropy_backward(torch.ones_like(loss), x, y, logz, None, None, *CE_SCALARS),
        "fused": ops.cross_entropy_forward_backward(x, y, None, None, *CE_SCALARS, 1)[1],
        "entropy": ops.pixel_entropy_backward(torch.ones(2, 7, 9, device=device), x, False),
    }
    xc = x.contiguous()
    lossc, logzc, _ = ops.cross_entropy_forward(xc, y, None, None, *CE_SCALARS, False)
    contiguous = {
        "backward": ops.cross_entropy_backward(torch.ones_like(lossc), xc, y, logzc, None, None, *CE_SCALARS),
        "fused": ops.cross_entropy_forward_backward(xc, y, None, None, *CE_SCALARS, 1)[1],
        "entropy": ops.pixel_entropy_backward(torch.ones(2, 7, 9, device=device), xc, False),
    }
    for name, grad in grads.items():
        assert grad.stride() == x.stride(), name
        assert_close(grad, contiguous[name], dtype)


def _channels_last_kernel_outputs(x, y, uncertainty, weight, grad):
    """The outputs of every op with a group-of-lanes CUDA kernel: the loss's forward, backward and fused
    forward-backward (modes 0, 1, 2) in each kernel variant (no weight, entropy weight, given map; with
    and without label smoothing), pixel_entropy and its backward, the pixel scores (single-prediction
    and Monte-Carlo) and perturbation_statistics."""
    outputs = []
    for alpha, u, smoothing, w in [
        (0.0, None, 0.0, None),
        (0.0, None, 0.1, weight),
        (1.0, None, 0.0, weight),
        (1.0, None, 0.1, None),
        (1.0, uncertainty, 0.0, None),
        (1.0, uncertainty, 0.1, weight),
    ]:
        scalars = (-100, smoothing, alpha, 2.0, 1.0, float("inf"))
        loss, logz, sums = ops.cross_entropy_forward(x, y, u, w, *scalars, False)
        outputs += [loss, logz, sums, ops.cross_entropy_forward(x, y, u, w, *scalars, True)[0]]
        outputs.append(ops.cross_entropy_backward(grad, x, y, logz, u, w, *scalars))
        for mode in (0, 1, 2):
            outputs += ops.cross_entropy_forward_backward(x, y, u, w, *scalars, mode)
    for normalized in (False, True):
        outputs += [ops.pixel_entropy(x, normalized), ops.pixel_entropy_backward(grad, x, normalized)]
    outputs += [ops.pixel_scores(x, method) for method in ("entropy", "margin", "least_confidence")]
    # Stacked samples keep a pixel's classes contiguous: torch.stack of channels-last logits (the
    # sequential kernel-noise passes), and samples between the pixel and its classes (N, H, W, K, C),
    # the layout torch.vmap gives the batched passes. The third sample moves every third pixel far, so
    # perturbation_statistics takes its plain form for some pixels of a warp and its shifted one for others.
    far = (torch.arange(x.shape[2:].numel(), device=x.device) % 3 == 0).reshape(x.shape[2:])
    samples = [x, x + 0.01 * torch.sin(x), x + torch.where(far, 3 * x.flip(1) - x, 0.001).to(x.dtype)]
    stacked = torch.stack(samples)
    interleaved = torch.stack([s.permute(0, 2, 3, 1) for s in samples], dim=3).permute(3, 0, 4, 1, 2)
    for perturbed in (stacked, interleaved):
        outputs += [ops.pixel_scores(perturbed, method) for method in ("mc_entropy", "bald")]
        outputs += ops.perturbation_statistics(x, perturbed)
    return outputs


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("C", [1, 3, 19, 40, 150])
def test_channels_last_cuda_kernels_match_the_cpu(C, dtype, seed):
    """Channels-last logits on CUDA take a group of 4, 8, 16 or 32 lanes per pixel (C = 3, 19, 40, 150;
    C = 1 keeps one thread per pixel): the same results as the CPU for an empty batch, one pixel, and
    37 x 61 pixels, no multiple of a group, a warp or a block."""
    for n, h, w in [(0, 3, 5), (1, 1, 1), (3, 37, 61)]:
        x = random_logits((n, C, h, w)).to(dtype).contiguous(memory_format=torch.channels_last)
        y = random_target((n, h, w), C, ignore_index=-100)
        uncertainty = torch.rand(n, h, w)
        weight = torch.rand(C) + 0.5
        grad = torch.rand(n, h, w)
        expected = _channels_last_kernel_outputs(x, y, uncertainty, weight, grad)
        got = _channels_last_kernel_outputs(*(t.cuda() for t in (x, y, uncertainty, weight, grad)))
        for a, b in zip(got, expected):
            if b.shape == x.shape:
                assert a.stride() == x.stride()
            assert_close(a.cpu(), b, dtype)


# --- 4. empty and huge inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_every_op_accepts_empty_inputs(device):
    x = torch.randn(0, 4, 3, 5, device=device)
    y = torch.zeros(0, 3, 5, dtype=torch.long, device=device)
    xg = x.clone().requires_grad_()
    loss = uaal_ext.uaal_cross_entropy(xg, y, alpha=1.0, reduction="sum")
    loss.backward()
    assert loss.item() == 0 and xg.grad.shape == x.shape
    _, logz, _ = ops.cross_entropy_forward(x, y, None, None, *CE_SCALARS, True)
    assert (
        ops.cross_entropy_backward(torch.ones((), device=device), x, y, logz, None, None, *CE_SCALARS).shape == x.shape
    )
    assert pixel_entropy(x).shape == (0, 3, 5)
    assert ops.pixel_entropy_backward(torch.ones(0, 3, 5, device=device), x, False).shape == x.shape
    for method in ("entropy", "margin", "least_confidence"):
        assert pixel_score_map(x, method).shape == (0, 3, 5)
    assert pixel_score_map(x[None], "bald").shape == (0, 3, 5)
    assert perturbation_statistics(x, x[None].expand(2, *x.shape))[0].shape == (0, 3, 5)
    assert kernel_noise([torch.empty(0, 3, device=device)], 2, 0.1)[0].shape == (2, 0, 3)
    if device != "cpu":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "topk_mean"])
def test_aggregate_images_without_pixels(device, reduction):
    """Own test: on CUDA, topk_mean's gather at index 0 of an empty dim is a device-side assert."""
    scores = torch.rand(3, 0, 2, device=device)
    assert torch.equal(aggregate_scores(scores, None, reduction, 0.5).cpu(), torch.zeros(3))
    if device != "cpu":
        torch.cuda.synchronize()


@cuda_only
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a CUDA device with 40 GiB",
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_more_than_2_31_logits(channels_last, seed):
    """2^31 + 2^16 float16 logits: pixel offsets and c * channel_stride exceed int32."""
    N, C, H, W = 1, 2, 2**15, 2**15 + 2
    shape = (N, H, W, C) if channels_last else (N, C, H, W)
    x = torch.empty(shape, dtype=torch.float16, device="cuda").normal_()
    x = x.permute(0, 3, 1, 2) if channels_last else x
    assert x.numel() > 2**31
    y = torch.randint(0, C, (N, H, W), device="cuda", dtype=torch.uint8)
    tail = (..., slice(-3, None), slice(-5, None))  # the last pixels, past element 2^31
    entropy = ops.pixel_entropy(x, False)
    assert_close(entropy[tail], pixel_entropy_reference(x[tail].double()), torch.float16)
    loss, grad = ops.cross_entropy_forward_backward(x, y, None, None, -100, 0.0, 0.0, 2.0, 1.0, float("inf"), 0)
    assert grad.stride() == x.stride() and torch.isfinite(loss)
    z = x[tail].double()
    expected = z.softmax(1) - F.one_hot(y[tail].long(), C).permute(0, 3, 1, 2)
    assert_close(grad[tail], expected, torch.float16)


# --- 5. streams and devices --------------------------------------------------------------------------


@cuda_only
def test_ops_run_on_the_current_stream(seed):
    """Inputs written on a side stream after a long sleep: an op launched on another stream would
    read them before they exist."""
    x = random_logits((4, 7, 64, 65)).float().cuda()
    y = random_target((4, 64, 65), 7, ignore_index=-100).cuda()
    expected = _all_ops(x, y)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        x_side = x * 1.0
        got = _all_ops(x_side, y)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@cuda_only
def test_ops_do_not_synchronize(seed):
    x = random_logits((2, 5, 9, 8)).float().cuda()
    y = random_target((2, 9, 8), 5, ignore_index=-100).cuda()
    weights = [torch.randn(8, 3, 3, 3, device="cuda"), torch.randn(8, device="cuda")]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _all_ops(x, y)
        kernel_noise(weights, 2, 0.1, granularity="filter")
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_tensors_on_another_device_than_the_current_one(seed):
    x = random_logits((2, 5, 9, 8)).float()
    y = random_target((2, 9, 8), 5, ignore_index=-100)
    with torch.cuda.device(0):
        expected = [t.cpu() for t in _all_ops(x.to("cuda:0"), y.to("cuda:0"))]
        got = _all_ops(x.to("cuda:1"), y.to("cuda:1"))
        noise = kernel_noise([torch.ones(4, 3, device="cuda:1")], 2, 0.1)[0]
    assert noise.device == torch.device("cuda:1")
    for a, b in zip(got, expected):
        assert a.device == torch.device("cuda:1") and torch.equal(a.cpu(), b)


# --- 3. dropout recording with a CUDA generator ------------------------------------------------------


class _DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.drop, self.drop2d = nn.Conv2d(3, 6, 3, padding=1), nn.Dropout(0.3), nn.Dropout2d(0.3)
        self.head = nn.Conv2d(6, 5, 1)

    def forward(self, x):
        h = F.dropout(
            self.drop2d(self.drop(torch.relu(self.stem(x)))), 0.2, self.training
        )  # functional: replayed by state
        return self.head(h)


@cuda_only
@pytest.mark.parametrize("amp", [False, True])
def test_record_dropout_and_replay_on_cuda(amp, seed):
    model, images = _DropoutNet().cuda().train(), torch.randn(3, 3, 7, 6, device="cuda")
    before = rng_state(images.device)
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        with record_dropout(model, images.device) as rec:
            out = model(images)
        assert torch.equal(rec.rng_state, before)
        assert all(m.device == images.device for ms in rec.masks.values() for m in ms if m is not None)
        after_forward = rng_state(images.device)
        _, sigma = KernelNoise(eta=0.0, num_samples=3, seed=seed)(model, images, clean_logits=out, dropout_masks=rec)
        assert torch.equal(rng_state(images.device), after_forward)
        state = rng_state(images.device)
        out2 = model(images)
        _, sigma2 = KernelNoise(eta=0.0, num_samples=2, seed=seed)(
            model, images, clean_logits=out2, dropout_state=state
        )
    assert sigma.abs().max() < 1e-6 and sigma2.abs().max() < 1e-6


# --- 6. CPU / CUDA parity on non-finite inputs -------------------------------------------------------


@cuda_only
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_and_cuda_agree_on_nonfinite_inputs(channels_last, seed):
    x = random_logits((2, 5, 6, 7)).float()
    x[0, :, 0, 0] = float("nan")
    x[0, 2, 1, 1] = float("inf")
    x[1, 3, 3, 3] = float("-inf")
    x[1, 1, 4, 4] = float("nan")  # one NaN class, seen by one lane of a channels-last pixel's group
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = random_target((2, 6, 7), 5, ignore_index=-100)
    y[0, 0, 0] = 1  # the NaN pixel is valid
    for a, b in zip(_all_ops(x, y), _all_ops(x.cuda(), y.cuda())):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6, equal_nan=True)
