"""Tests of the torch.distributed paths on the CPU (gloo): data-parallel training, sharded scoring and
evaluation, the loss over the global batch, and launches that must fail clearly instead of hanging.

Each group of ranks is real: ``torch.multiprocessing.spawn`` starts the processes, which join a gloo
group through ``uaal_ext.distributed.init_from_environment`` exactly as under torchrun (the launch
variables set by hand), one thread each. A one-process group is the reference wherever a result
must equal the single-process one: it runs the same code with the same thread count.
The AL driver under ``torchrun`` itself is tested in ``test_distributed_experiment.py``.
"""

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from testing import argmax_pixels
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader

from uaal_ext import UAALLoss, distributed
from uaal_ext.acquisition import make_method, method_names, score_pool, select_from_pool
from uaal_ext.experiment.al.datasets import IndexedImages
from uaal_ext.experiment.data import SyntheticScenes
from uaal_ext.experiment.models import build_model
from uaal_ext.experiment.training import TrainConfig, evaluate, train

NUM_CLASSES = 3
IGNORE = 255


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _join(rank, world, port, timeout=60):
    """Joins a gloo group the way a torchrun worker does: from the launch variables."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        UAAL_COLLECTIVE_TIMEOUT=str(timeout),
    )
    torch.set_num_threads(1)
    return distributed.init_from_environment("cpu")


def _spawn(worker, world, *args):
    """Runs ``worker(rank, world, port, *args)`` in ``world`` fresh processes; returns when all end."""
    mp.spawn(worker, args=(world, _free_port(), *args), nprocs=world, join=True)


def _results(folder, world):
    return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def _two_ranks_and_one(worker, tmp_path_factory):
    """What ``worker`` saved when run by 2 ranks and by a 1-process group, and the 2-rank folder."""
    two, one = tmp_path_factory.mktemp("two_ranks"), tmp_path_factory.mktemp("one_rank")
    _spawn(worker, 2, str(two))
    _spawn(worker, 1, str(one))
    return {"two": _results(two, 2), "one": _results(one, 1)[0], "folder": two}


def _pixel_data():
    return argmax_pixels(8, 12, 1, IGNORE)


def _group_norm_net():
    """No batch norm: one image's output does not depend on the others in its batch, so a 2-rank
    step and a 1-process step over the same global batch compute the same gradient."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 1))


TRAIN_CASES = {
    "standard": dict(mode="standard"),
    "kernel_noise_mean_by_weight": dict(mode="uaal", uncertainty="kernel_noise", normalize="mean", num_samples=2),
    "entropy_max": dict(mode="uaal", uncertainty="entropy", normalize="max", normalize_by_weight=False),
}
FAST = dict(epochs=2, batch_size=4, lr=0.05, channels_last=False, amp=False, ignore_index=IGNORE)


def _parameters(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _train_worker(rank, world, port, folder):
    _join(rank, world, port)
    steps = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: steps.append(
            torch.cat([p.detach().flatten() for g in optimizer.param_groups for p in g["params"]]).clone()
        )
    )
    out = {}
    for name, case in TRAIN_CASES.items():
        steps.clear()
        model = _group_norm_net()
        result = train(model, _pixel_data(), TrainConfig(**FAST, **case), progress=False)
        out[name] = {"steps": list(steps), "final": _parameters(model), "losses": result.losses}
    # The real model, batch norm per rank (not synchronised on the CPU): identical on every rank anyway.
    steps.clear()
    torch.manual_seed(0)
    model = build_model("small", SyntheticScenes.NUM_CLASSES)
    scenes = SyntheticScenes("train", 8, image_size=(32, 64), seed=0)
    config = TrainConfig(epochs=1, batch_size=4, lr=0.05, mode="uaal", num_samples=1)
    train(model, scenes, config, checkpoint_path=os.path.join(folder, "deeplab.pt"), progress=False)
    out["deeplab_steps"] = list(steps)
    try:
        train(_group_norm_net(), _pixel_data(), TrainConfig(**{**FAST, "batch_size": 3}), progress=False)
    except ValueError as error:
        out["indivisible"] = str(error)
    hook.remove()
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    distributed.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every training case run by 2 ranks and by a 1-process group."""
    return _two_ranks_and_one(_train_worker, tmp_path_factory)


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_ranks_hold_identical_parameters_after_every_step(trained, case):
    first, second = trained["two"]
    assert len(first[case]["steps"]) == 4  # 8 images, global batch 4, 2 epochs
    for step, (a, b) in enumerate(zip(first[case]["steps"], second[case]["steps"])):
        assert torch.equal(a, b), f"step {step}"
    assert first[case]["losses"] == second[case]["losses"]  # the global loss, the same number


def test_ranks_hold_identical_parameters_with_per_rank_batch_norm(trained):
    first, second = trained["two"]
    assert len(first["deeplab_steps"]) == 2
    for a, b in zip(first["deeplab_steps"], second["deeplab_steps"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_two_ranks_train_like_one_process_over_the_same_global_batches(trained, case):
    # Float32 rounding only: the 2-rank step sums two half-batch gradients where one process sums
    # one, and reduces the denominators in another order (~1e-7 relative per sum, over 4 steps).
    two, one = trained["two"][0][case], trained["one"][case]
    assert not torch.equal(one["steps"][0], one["steps"][-1])  # training moved the weights
    for step, (a, b) in enumerate(zip(two["steps"], one["steps"])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"step {step}")
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=1e-6)


def test_the_global_batch_must_divide_by_the_world_size(trained):
    message = trained["two"][0]["indivisible"]
    assert "batch_size (3)" in message and "world size (2)" in message
    assert "indivisible" not in trained["one"]  # 3 divides by 1


def test_a_checkpoint_resumes_only_with_the_world_size_that_wrote_it(trained):
    path = trained["folder"] / "deeplab.pt"
    assert torch.load(path, weights_only=True)["world_size"] == 2
    torch.manual_seed(0)
    model = build_model("small", SyntheticScenes.NUM_CLASSES)
    config = TrainConfig(epochs=1, batch_size=4, lr=0.05, mode="uaal", num_samples=1)  # as it was written
    with pytest.raises(ValueError, match=r"written by 2 process\(es\) and this run has 1"):
        train(
            model,
            SyntheticScenes("train", 8, image_size=(32, 64), seed=0),
            config,
            checkpoint_path=path,
            progress=False,
        )


# ---------------------------------------------------------------------------------------------------
# Scoring, evaluation and the loss, sharded


def _scoring_worker(rank, world, port, folder):
    _join(rank, world, port)
    torch.manual_seed(3)
    model = build_model("small", SyntheticScenes.NUM_CLASSES).eval()
    pool = IndexedImages(SyntheticScenes("pool", 11, image_size=(32, 64), seed=5))  # 11: batches of 3 do not divide it
    loader = DataLoader(pool, batch_sampler=distributed.shard_batches(len(pool), 3))
    gather = world > 1
    out = {"selections": {}, "scores": {}}
    for name in method_names():
        options = dict(seed=7, num_samples=2)
        out["selections"][name] = select_from_pool(
            model, loader, name, 4, exclude=[0, 6], progress=False, gather_ranks=gather, **options
        )
        if make_method(name, **options).ranks_by_score:
            out["scores"][name] = score_pool(model, loader, name, progress=False, gather_ranks=gather, **options)
    scenes = SyntheticScenes("val", 7, image_size=(32, 64), seed=9)
    metrics = evaluate(
        model, scenes, SyntheticScenes.NUM_CLASSES, batch_size=3, quality_sources=("entropy", "kernel_noise"), seed=2
    )
    out["metrics"] = metrics.as_dict()

    # The loss of each rank's half of one batch, against the whole batch in one process.
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, NUM_CLASSES, 5, 6, generator=g)
    target = torch.randint(0, NUM_CLASSES, (4, 5, 6), generator=g)
    target[:, 0] = IGNORE
    target[3] = IGNORE  # one image without a valid pixel
    uncertainty = torch.rand(4, 5, 6, generator=g)
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    out["losses"] = {}
    for normalize, by_weight, reduction in (("mean", True, "mean"), ("max", False, "mean"), ("scale", True, "sum")):
        criterion = UAALLoss(
            ignore_index=IGNORE,
            normalize=normalize,
            normalize_by_weight=by_weight,
            reduction=reduction,
            sync_ranks=True,
        )
        mine = logits[share].clone().requires_grad_()
        loss = criterion(mine, target[share], uncertainty[share])
        loss.backward()
        total = distributed.all_reduce_sum(loss.detach()) / world  # the ranks' mean: the global loss
        gradient = torch.cat(distributed.gather_objects(mine.grad / world))  # what DDP's average gives
        out["losses"][(normalize, by_weight, reduction)] = (total, gradient)
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    distributed.shutdown()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return _two_ranks_and_one(_scoring_worker, tmp_path_factory)


@pytest.mark.parametrize("method", method_names())
def test_sharded_scoring_selects_exactly_what_one_process_selects(scored, method):
    expected = scored["one"]["selections"][method]
    assert len(expected) == 4 and not {0, 6} & set(expected)
    for rank_result in scored["two"]:
        assert rank_result["selections"][method] == expected
        if method in scored["one"]["scores"]:
            assert rank_result["scores"][method] == scored["one"]["scores"][method]  # every score, exactly
            assert sorted(rank_result["scores"][method]) == list(range(11))


def test_sharded_evaluation_sums_to_the_single_process_metrics(scored):
    expected = scored["one"]["metrics"]
    assert expected["uncertainty_quality"]["kernel_noise"]["num_pixels"] > 0
    for rank_result in scored["two"]:
        assert rank_result["metrics"] == expected  # counts are integers; kernel noise keyed by batch


@pytest.mark.parametrize("options", [("mean", True, "mean"), ("max", False, "mean"), ("scale", True, "sum")])
def test_the_loss_over_ranks_is_the_loss_over_the_global_batch(scored, options):
    expected_loss, expected_gradient = scored["one"]["losses"][options]
    for rank_result in scored["two"]:
        loss, gradient = rank_result["losses"][options]
        torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-6, atol=1e-8)


def test_without_a_group_sync_ranks_changes_nothing():
    g = torch.Generator().manual_seed(4)
    logits, target = (
        torch.randn(3, NUM_CLASSES, 4, 4, generator=g),
        torch.randint(0, NUM_CLASSES, (3, 4, 4), generator=g),
    )
    uncertainty = torch.rand(3, 4, 4, generator=g)
    plain = UAALLoss(normalize="mean")(logits, target, uncertainty)
    assert torch.equal(UAALLoss(normalize="mean", sync_ranks=True)(logits, target, uncertainty), plain)


# ---------------------------------------------------------------------------------------------------
# Launches that must fail clearly


def _late_rank_worker(rank, world, port, folder):
    _join(rank, world, port, timeout=2)
    if rank == 1:
        time.sleep(6)  # never reaches the barrier in time
        return
    started = time.perf_counter()
    try:
        distributed.barrier()
        message = None
    except RuntimeError as error:
        message = str(error)
    torch.save({"message": message, "seconds": time.perf_counter() - started}, os.path.join(folder, "rank0.pt"))


def test_a_collective_that_a_rank_never_joins_times_out_naming_it(tmp_path):
    _spawn(_late_rank_worker, 2, str(tmp_path))
    result = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert result["message"] is not None and "1" in result["message"]
    assert result["seconds"] < 6


def test_a_rank_without_a_gpu_is_told_so(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    with pytest.raises(distributed.DistributedLaunchError, match=r"LOCAL_RANK=\d+\) has no CUDA device"):
        distributed.init_from_environment("cuda")


def test_a_launch_without_the_launcher_variables_is_told_which(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedLaunchError, match="LOCAL_RANK.*not set; launch with torchrun"):
        distributed.init_from_environment("cpu")


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_bad_collective_timeout_is_named(monkeypatch, value):
    monkeypatch.setenv("UAAL_COLLECTIVE_TIMEOUT", value)
    with pytest.raises(distributed.DistributedLaunchError, match="UAAL_COLLECTIVE_TIMEOUT"):
        distributed.collective_timeout()


def test_one_process_answers_for_a_group_of_one():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (1, 0, True)
    assert distributed.shard_batches(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert distributed.batch_numbers(7, 3) == [0, 1, 2]
    value = torch.ones(2)
    assert distributed.all_reduce_sum(value) is value and distributed.gather_objects(5) == [5]


# ---------------------------------------------------------------------------------------------------
# SyncBatchNorm (torch runs it on GPUs only)

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm over NCCL needs 2 GPUs")


def _sync_batch_norm_worker(rank, world, port, folder):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    device = distributed.init_from_environment("cuda")
    torch.manual_seed(0)
    model = build_model("small", SyntheticScenes.NUM_CLASSES)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05, amp=False, device=str(device))
    train(model, SyntheticScenes("train", 16, image_size=(32, 64), seed=0), config, progress=False)
    synced = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    torch.save({"parameters": _parameters(model).cpu(), "synced": synced}, os.path.join(folder, f"rank{rank}.pt"))
    distributed.shutdown()


@two_gpus
def test_sync_batch_norm_makes_two_gpus_train_like_one(tmp_path_factory):
    # The same global batches and batch statistics over all 8 images of a step: float rounding only
    # (the statistics are summed in another order), over 4 steps.
    runs = _two_ranks_and_one(_sync_batch_norm_worker, tmp_path_factory)
    (first, second), single = runs["two"], runs["one"]
    assert first["synced"] > 0
    assert torch.equal(first["parameters"], second["parameters"])
    torch.testing.assert_close(first["parameters"], single["parameters"], rtol=1e-3, atol=1e-4)


def test_report_and_maps_run_on_rank_zero_only(monkeypatch, tmp_path):
    from uaal_ext.experiment import cli

    monkeypatch.setenv("RANK", "1")
    for command in (["report", str(tmp_path / "no_experiment")], ["maps", str(tmp_path / "no_experiment")]):
        assert cli.main(command) == 0  # rank 0 does the work (here it would fail: the folder is empty)
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["report", str(tmp_path / "no_experiment")]) == 2
