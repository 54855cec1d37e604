"""uaal_ext.experiment.data: synthetic scenes, the Cityscapes and ADE20K loaders, transforms, the factory."""

import os
import pickle
import re
import time

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image
from torch.utils.data import DataLoader

from uaal_ext.experiment.data import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SYNTHETIC_CLASSES,
    ADE20KSegmentation,
    CityscapesSegmentation,
    EvalTransform,
    SyntheticScenes,
    TrainTransform,
    dataset_info,
    dataset_names,
    make_dataset,
)

NUM_SYNTH = len(SYNTHETIC_CLASSES)
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)

# The standard Cityscapes label id -> train id table (cityscapesScripts' labels.py), written out
# here so the loader is checked against the published numbers, not against itself.
CITYSCAPES_TRAIN_IDS = dict(zip([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], range(19)))


def _denormalize(image):
    return image * STD + MEAN


# --------------------------------------------------------------------------------------------------
# Synthetic scenes


@pytest.fixture(scope="module")
def train_frequencies():
    """(pixel, image) class frequencies over the default 200-image train split, computed once."""
    return SyntheticScenes("train").class_frequencies()


def test_synthetic_item_contract():
    ds = SyntheticScenes("train")
    assert (len(ds), len(SyntheticScenes("pool")), len(SyntheticScenes("val"))) == (200, 200, 50)
    assert len(SyntheticScenes("val", 7)) == 7
    assert SyntheticScenes.NUM_CLASSES == NUM_SYNTH == 10 and SyntheticScenes.IGNORE_INDEX == 255
    images = []
    for i in range(8):
        image, label = ds[i]
        assert image.shape == (3, 64, 128) and image.dtype == torch.float32
        assert label.shape == (64, 128) and label.dtype == torch.int64
        assert torch.isfinite(image).all()
        valid = label[label != IGNORE_INDEX]
        assert valid.min() >= 0 and valid.max() < NUM_SYNTH
        raw, raw_label = ds.raw(i)
        assert raw.min() >= 0 and raw.max() <= 1 and torch.equal(raw_label, label)
        torch.testing.assert_close(_denormalize(image), raw)  # ImageNet normalisation of [0, 1] pixels
        images.append(image)
    stacked = torch.stack(images)  # normalised: roughly zero mean, unit variance per channel
    assert stacked.mean((0, 2, 3)).abs().max() < 1.0
    assert 0.4 < stacked.std((0, 2, 3)).min() and stacked.std((0, 2, 3)).max() < 2.0
    image, label = SyntheticScenes("val", 2, image_size=(40, 72))[1]
    assert image.shape == (3, 40, 72) and label.shape == (40, 72)


def test_synthetic_deterministic_and_order_independent():
    ds = SyntheticScenes("train", 12, seed=3)
    first = ds[5]
    assert all(torch.equal(a, b) for a, b in zip(first, ds[5]))
    fresh = SyntheticScenes("train", 12, seed=3)
    for i in range(5):  # walk 0..4 first: item 5 must not depend on what was drawn before
        fresh[i]
    assert all(torch.equal(a, b) for a, b in zip(first, fresh[5]))
    assert all(torch.equal(a, b) for a, b in zip(first, ds[-7]))

    # Independent of (and not consuming) torch's global generator.
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = ds[2]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    assert torch.equal(a[0], ds[2][0])

    copy = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert torch.equal(copy[5][0], first[0])

    other = SyntheticScenes("train", 12, seed=4)
    assert not torch.equal(other[5][0], first[0])
    assert sum(torch.equal(ds[i][1], other[i][1]) for i in range(6)) == 0


def test_synthetic_same_in_dataloader_workers():
    ds = SyntheticScenes("val", 6, seed=1)
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    images, labels = zip(*loader)
    assert torch.equal(torch.cat(images), torch.stack([ds[i][0] for i in range(6)]))
    assert torch.equal(torch.cat(labels), torch.stack([ds[i][1] for i in range(6)]))


def test_synthetic_splits_disjoint():
    n = 15
    splits = {s: [SyntheticScenes(s, n)[i] for i in range(n)] for s in ("train", "pool", "val")}
    for a, b in [("train", "pool"), ("train", "val"), ("pool", "val")]:
        for x, y in splits[a]:
            assert not any(torch.equal(x, x2) or torch.equal(y, y2) for x2, y2 in splits[b]), (a, b)


def test_synthetic_every_class_and_long_tail(train_frequencies):
    pixel, image = train_frequencies
    assert pixel.shape == image.shape == (NUM_SYNTH,)
    torch.testing.assert_close(pixel.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (image > 0).all(), dict(zip(SYNTHETIC_CLASSES, image.tolist()))
    assert image.min() <= 0.2  # a rare class, in at most a fifth of the images
    for common in ("road", "sky"):
        assert image[SYNTHETIC_CLASSES.index(common)] >= 0.8
    assert image[SYNTHETIC_CLASSES.index("sign")] <= 0.2
    assert pixel.max() / pixel.min() > 10  # pixel frequencies span more than an order of magnitude


def test_synthetic_class_frequencies_counts():
    ds = SyntheticScenes("pool", 6, seed=2)
    pixel, image = ds.class_frequencies()
    labels = torch.stack([ds.raw(i)[1] for i in range(6)])
    counts = torch.bincount(labels[labels != 255], minlength=NUM_SYNTH).double()
    torch.testing.assert_close(pixel, counts / counts.sum())
    present = torch.stack([torch.bincount(label[label != 255], minlength=NUM_SYNTH) > 0 for label in labels])
    torch.testing.assert_close(image, present.double().mean(0))


def test_synthetic_ignored_borders():
    ds = SyntheticScenes("train", 10)
    labels = torch.stack([ds.raw(i)[1] for i in range(10)])
    ignored = (labels == IGNORE_INDEX).double().mean().item()
    assert 0.01 < ignored < 0.2
    # Ignored pixels are thin borders between regions: hardly ever the centre of a 3x3 block of
    # them (only where slivers between objects collapse), and nearly all have two different
    # classes within their 3x3 neighbourhood.
    ignored_map = (labels == IGNORE_INDEX).float()[:, None]
    solid = torch.nn.functional.avg_pool2d(ignored_map, 3, 1)[:, 0] == 1  # (N, H-2, W-2)
    assert solid.sum() < 0.01 * ignored_map.sum()
    padded = torch.nn.functional.pad(labels.float()[:, None], (1, 1, 1, 1), mode="replicate")
    patches = padded.unfold(2, 3, 1).unfold(3, 3, 1)[:, 0].flatten(-2).long()  # (N, H, W, 9)
    present = torch.zeros(*patches.shape[:3], 256).scatter_(-1, patches, 1.0)  # classes seen in each 3x3
    between = (present[..., :NUM_SYNTH].sum(-1) >= 2)[labels == IGNORE_INDEX]
    assert between.double().mean() > 0.9


def test_synthetic_difficulty_varies():
    ds = SyntheticScenes("val", 40)
    measured, drawn = [], []
    for i in range(len(ds)):
        image, label = ds.raw(i)
        same = (label[:, 1:] == label[:, :-1]) & (label[:, 1:] != IGNORE_INDEX)
        step = (image[:, :, 1:] - image[:, :, :-1])[:, same]  # neighbours inside one region
        measured.append(step.abs().median().item())  # robust sensor-noise estimate from the pixels
        drawn.append(ds.scene_info(i)["noise_std"])
    info = ds.scene_info(0)
    assert set(info) >= {"difficulty", "noise_std", "blur_sigma", "contrast", "clutter"}
    assert np.percentile(measured, 90) > 2.5 * np.percentile(measured, 10)
    assert scipy.stats.spearmanr(measured, drawn).statistic > 0.8
    difficulty = [ds.scene_info(i)["difficulty"] for i in range(len(ds))]
    assert min(difficulty) < 0.2 and max(difficulty) > 0.8


def _valid_pixels(ds, normalised):
    colours, classes = [], []
    for i in range(len(ds)):
        image, label = ds[i] if normalised else ds.raw(i)
        keep = label != IGNORE_INDEX
        colours.append(image[:, keep].T)
        classes.append(label[keep])
    return torch.cat(colours), torch.cat(classes)


def test_synthetic_colour_alone_does_not_separate_classes():
    fit_x, fit_y = _valid_pixels(SyntheticScenes("train", 20), normalised=True)
    test_x, test_y = _valid_pixels(SyntheticScenes("val", 20), normalised=True)
    means = torch.stack([fit_x[fit_y == c].mean(0) for c in range(NUM_SYNTH)])
    nearest_mean = (torch.cdist(test_x, means).argmin(1) == test_y).double().mean().item()
    assert nearest_mean < 0.75, nearest_mean

    # A stronger colour-only classifier: the majority class of each cell of a 16^3 RGB histogram.
    fit_x, fit_y = _valid_pixels(SyntheticScenes("train", 20), normalised=False)
    test_x, test_y = _valid_pixels(SyntheticScenes("val", 20), normalised=False)
    cell = lambda x: ((x * 16).long().clamp(0, 15) * torch.tensor([256, 16, 1])).sum(1)  # noqa: E731
    counts = torch.zeros(16**3, NUM_SYNTH).index_put_((cell(fit_x), fit_y), torch.ones(len(fit_y)), accumulate=True)
    histogram = (counts.argmax(1)[cell(test_x)] == test_y).double().mean().item()
    assert histogram < 0.75, histogram
    majority = (test_y == torch.bincount(fit_y).argmax()).double().mean().item()
    assert histogram > majority + 0.05  # colour carries some information, just not enough


def test_synthetic_with_train_transform():
    ds = SyntheticScenes("train", 3, transform=TrainTransform((32, 48)))
    torch.manual_seed(0)
    image, label = ds[0]
    assert image.shape == (3, 32, 48) and label.shape == (32, 48) and label.dtype == torch.int64


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="split.*'test'"):
        SyntheticScenes("test")
    with pytest.raises(ValueError, match="size"):
        SyntheticScenes("train", -1)
    with pytest.raises(ValueError, match="seed"):
        SyntheticScenes("train", seed=-3)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticScenes("train", image_size=(8, 128))
    with pytest.raises(IndexError, match="index 4"):
        SyntheticScenes("val", 4)[4]


def test_synthetic_is_fast():
    ds = SyntheticScenes("train", 20)
    ds[0]
    start = time.perf_counter()
    for i in range(20):
        ds[i]
    per_item = (time.perf_counter() - start) / 20
    print(f"{per_item * 1e3:.1f} ms per 64x128 item")
    assert per_item < 0.05  # a few ms when the machine is quiet; loose for a shared 2-core box


# --------------------------------------------------------------------------------------------------
# Transforms


def test_eval_transform_inputs():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ids = np.random.default_rng(1).integers(0, 20, (5, 7), dtype=np.uint8)
    expected = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - MEAN) / STD
    transform = EvalTransform()
    for image in (
        Image.fromarray(rgb),
        torch.from_numpy(rgb).permute(2, 0, 1),
        torch.from_numpy(rgb).permute(2, 0, 1) / 255.0,
    ):
        for label in (Image.fromarray(ids), ids, torch.from_numpy(ids)):
            out, out_label = transform(image, label)
            torch.testing.assert_close(out, expected)
            assert out_label.dtype == torch.int64 and torch.equal(out_label, torch.from_numpy(ids).long())
    with pytest.raises(ValueError, match=r"\(3, 5, 7\).*\(5, 6\)"):
        transform(torch.rand(3, 5, 7), torch.zeros(5, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="label.*integer"):
        transform(torch.rand(3, 5, 7), torch.zeros(5, 7))


@pytest.mark.parametrize("divisor", [1, 4, 16])
def test_eval_transform_pads_to_size_divisor(divisor):
    h, w = 21, 30
    image, label = torch.rand(3, h, w), torch.randint(0, 19, (h, w))
    out, out_label = EvalTransform(size_divisor=divisor, ignore_index=250)(image, label)
    padded_h, padded_w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    assert out.shape == (3, padded_h, padded_w) and out_label.shape == (padded_h, padded_w)
    torch.testing.assert_close(out[:, :h, :w], (image - MEAN) / STD)
    assert torch.equal(out_label[:h, :w], label)
    assert (out[:, h:, :] == 0).all() and (out[:, :, w:] == 0).all()
    assert (out_label[h:, :] == 250).all() and (out_label[:, w:] == 250).all()
    for bad in (0, -16, 1.5, True):
        with pytest.raises(ValueError, match="size_divisor"):
            EvalTransform(size_divisor=bad)


def _coded_pair(h, w, seed):
    """An image whose channels encode (label, row, column) and a blocky label map."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 19, (h // 8 + 1, w // 8 + 1), generator=g)
    label = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w]
    label[torch.rand(h, w, generator=g) < 0.02] = 255  # some ignored pixels in the input too
    rows = torch.arange(h).view(-1, 1).expand(h, w) / h
    cols = torch.arange(w).view(1, -1).expand(h, w) / w
    image = torch.stack([label.float() / 255, rows, cols])
    return image, label


def test_train_transform_shapes_and_label_values():
    transform = TrainTransform((24, 40))
    for seed, (h, w) in enumerate([(10, 12), (24, 40), (50, 90), (33, 17)]):
        image, label = _coded_pair(h, w, seed)
        for k in range(5):
            out, out_label = transform(image, label, generator=torch.Generator().manual_seed(10 * seed + k))
            assert out.shape == (3, 24, 40) and out.dtype == torch.float32
            assert out_label.shape == (24, 40) and out_label.dtype == torch.int64
            assert set(out_label.unique().tolist()) <= set(label.unique().tolist()) | {255}
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform((0, 4))
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform((4, 4), scale_range=(0.0, 1.0))


def test_train_transform_pads_with_ignore():
    image, label = _coded_pair(8, 8, 0)
    out, out_label = TrainTransform((16, 12), scale_range=(1.0, 1.0), flip=False)(image, label)
    assert torch.equal(out_label[:8, :8], label)
    assert (out_label[8:] == 255).all() and (out_label[:, 8:] == 255).all()
    torch.testing.assert_close(_denormalize(out[:, :8, :8]), image)
    assert (out[:, 8:] == 0).all() and (out[:, :, 8:] == 0).all()  # 0 = the mean colour


def test_train_transform_crop_and_flip_consistent():
    image, label = _coded_pair(40, 64, 1)
    transform = TrainTransform((24, 32), scale_range=(1.0, 1.0))
    flips = set()
    for seed in range(24):
        out, out_label = transform(image, label, generator=torch.Generator().manual_seed(seed))
        raw = _denormalize(out)
        rows = (raw[1] * 40).round().long()  # where each output pixel came from
        cols = (raw[2] * 64).round().long()
        torch.testing.assert_close(raw[0], out_label.float() / 255)  # image and label moved together
        assert torch.equal(label[rows, cols], out_label)
        assert (rows[1:] - rows[:-1] == 1).all()
        step = (cols[:, 1:] - cols[:, :-1]).unique().tolist()
        assert step in ([1], [-1])
        flips.add(step[0])
        window = label[rows.min() : rows.min() + 24, cols.min() : cols.min() + 32]
        assert torch.equal(out_label, window.flip(-1) if step[0] == -1 else window)
    assert flips == {1, -1}


def test_train_transform_scaled_image_matches_label():
    image, label = _coded_pair(32, 48, 2)
    image[0] = label.float() / 255
    for seed in range(6):
        out, out_label = TrainTransform((40, 40), scale_range=(1.3, 1.9))(
            image, label, generator=torch.Generator().manual_seed(seed)
        )
        # Inside uniform 5x5 blocks (away from label edges) bilinear and nearest agree.
        padded = torch.nn.functional.pad(out_label.float()[None, None], (2, 2, 2, 2), value=-1)[0, 0]
        patches = padded.unfold(0, 5, 1).unfold(1, 5, 1)
        inner = (patches == out_label[..., None, None]).flatten(-2).all(-1) & (out_label != 255)
        assert inner.sum() > 100
        torch.testing.assert_close(_denormalize(out)[0][inner] * 255, out_label[inner].float(), atol=1e-3, rtol=0)


def test_train_transform_seeded():
    image, label = _coded_pair(30, 50, 3)
    transform = TrainTransform((20, 20))
    a = transform(image, label, generator=torch.Generator().manual_seed(7))
    b = transform(image, label, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    outs = [transform(image, label, generator=torch.Generator().manual_seed(s))[1] for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])

    state = torch.get_rng_state()  # a passed generator leaves the global one alone
    transform(image, label, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(11)  # without one: torch's global generator, as DataLoader workers seed it
    c = transform(image, label)
    torch.manual_seed(11)
    assert all(torch.equal(x, y) for x, y in zip(c, transform(image, label)))


# --------------------------------------------------------------------------------------------------
# Cityscapes


def _write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _cityscapes(root, splits=("train", "val"), frames=2):
    """A tiny Cityscapes tree: 8x36 images; labels hold every id 0..33 and 255 in a known order."""
    ids = np.array(list(range(34)) + [255, 7], dtype=np.uint8)
    rng = np.random.default_rng(0)
    for split in splits:
        for k in range(frames):
            stem = f"aachen_{k:06d}_000019"
            _write_png(
                root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png",
                rng.integers(0, 256, (8, 36, 3), dtype=np.uint8),
            )
            label = np.tile(np.roll(ids, k), (8, 1))
            _write_png(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", label)
    return root


def test_cityscapes_loads_and_maps_ids(tmp_path):
    root = _cityscapes(tmp_path)
    ds = CityscapesSegmentation(root, "train")
    assert len(ds) == 2 and ds.images == sorted(ds.images)
    image, label = ds[1]
    assert image.shape == (3, 8, 36) and image.dtype == torch.float32 and label.dtype == torch.int64
    raw = np.asarray(Image.open(ds.labels[1]))
    expected = np.vectorize(lambda i: CITYSCAPES_TRAIN_IDS.get(int(i), 255))(raw)
    assert torch.equal(label, torch.from_numpy(expected).long())
    label0 = ds.load_label(0)[0]
    assert label0[7] == 0 and label0[26] == 13 and label0[0] == 255 and label0[33] == 18 and label0[34] == 255
    expected_image = torch.from_numpy(np.array(Image.open(ds.images[1]))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(_denormalize(image), expected_image)
    assert len(CityscapesSegmentation(root, "val")) == 2


def test_cityscapes_class_names_match_torchvision():
    from torchvision.datasets import Cityscapes

    by_train_id = {c.train_id: c.name for c in Cityscapes.classes if 0 <= c.train_id < 19}
    assert CITYSCAPES_CLASSES == tuple(by_train_id[i] for i in range(19))
    assert {c.id: c.train_id for c in Cityscapes.classes if c.train_id in range(19)} == CITYSCAPES_TRAIN_IDS
    assert dataset_info("cityscapes") == (19, 255, CITYSCAPES_CLASSES)


def test_cityscapes_missing_folders(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        CityscapesSegmentation(missing)
    root = _cityscapes(tmp_path / "cs", splits=("train",))
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "leftImg8bit" / "val"))):
        CityscapesSegmentation(root, "val")
    os.rename(root / "gtFine" / "train", root / "gtFine" / "moved")
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "gtFine" / "train"))):
        CityscapesSegmentation(root, "train")


def test_cityscapes_missing_or_bad_files(tmp_path):
    root = _cityscapes(tmp_path)
    label_path = root / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    os.remove(label_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(label_path))):
        CityscapesSegmentation(root, "train")

    root = _cityscapes(tmp_path / "b", frames=3)
    ds = CityscapesSegmentation(root, "train")
    image_path = ds.images[0]
    os.remove(image_path)
    with pytest.raises(FileNotFoundError, match=re.escape(image_path)):
        ds[0]
    with open(ds.images[1], "wb") as f:
        f.write(b"\x89PNG not really" + bytes(range(200)))
    with pytest.raises(OSError, match=re.escape(ds.images[1])) as err:
        ds[1]
    assert not isinstance(err.value, FileNotFoundError)
    _truncate(ds.images[2])  # PIL's own message would not name this file
    with pytest.raises(OSError, match="cannot read image file " + re.escape(ds.images[2])):
        ds[2]

    root = _cityscapes(tmp_path / "c")
    ds = CityscapesSegmentation(root, "val")
    with open(ds.labels[0], "wb") as f:
        f.write(os.urandom(64))
    with pytest.raises(OSError, match=re.escape(ds.labels[0])):
        ds[0]
    _write_png(ds.labels[1], np.full((8, 36), 7, dtype=np.uint8) + np.eye(8, 36, dtype=np.uint8) * 33)  # id 40
    with pytest.raises(ValueError, match=re.escape(ds.labels[1]) + r".*\[40\]"):
        ds[1]


# --------------------------------------------------------------------------------------------------
# ADE20K


def _ade20k(root, splits=("training",), stems=("ADE_train_00000001", "ADE_train_00000002")):
    """A tiny ADEChallengeData2016 tree: 6x26 JPEGs; labels hold 0..150 in order, row by row."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split in splits:
        for stem in stems:
            path = base / "images" / split / f"{stem}.jpg"
            os.makedirs(path.parent, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (6, 26, 3), dtype=np.uint8)).save(path, quality=95)
            labels = np.concatenate([np.arange(151), np.zeros(5)]).astype(np.uint8).reshape(6, 26)
            _write_png(base / "annotations" / split / f"{stem}.png", labels)
    return base


def test_ade20k_loads_and_maps_labels(tmp_path):
    base = _ade20k(tmp_path, splits=("training", "validation"))
    for root in (tmp_path, base):  # the folder itself or its parent
        ds = ADE20KSegmentation(root, "training")
        assert len(ds) == 2 and [os.path.basename(p) for p in ds.images] == [
            "ADE_train_00000001.jpg",
            "ADE_train_00000002.jpg",
        ]
        image, label = ds[0]
        assert image.shape == (3, 6, 26) and image.dtype == torch.float32 and label.dtype == torch.int64
        flat = label.flatten()
        assert flat[0] == 255 and flat[1] == 0 and flat[150] == 149 and (flat[151:] == 255).all()
        assert torch.equal(flat[1:151], torch.arange(150))
    assert len(ADE20KSegmentation(tmp_path, "validation")) == 2
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[149] == "flag"
    assert dataset_info("ade20k") == (150, 255, ADE20K_CLASSES)
    with pytest.raises(ValueError, match="split"):
        ADE20KSegmentation(tmp_path, "val")


def test_ade20k_missing_and_unpaired(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nothing"))):
        ADE20KSegmentation(tmp_path / "nothing")
    base = _ade20k(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(base / "images" / "validation"))):
        ADE20KSegmentation(base, "validation")
    os.remove(base / "annotations" / "training" / "ADE_train_00000002.png")
    with pytest.raises(
        FileNotFoundError, match=re.escape(str(base / "annotations" / "training" / "ADE_train_00000002.png"))
    ):
        ADE20KSegmentation(base)
    base = _ade20k(tmp_path / "b")
    os.remove(base / "images" / "training" / "ADE_train_00000001.jpg")
    with pytest.raises(
        FileNotFoundError, match=re.escape(str(base / "images" / "training" / "ADE_train_00000001.jpg"))
    ):
        ADE20KSegmentation(base)


def test_ade20k_bad_files(tmp_path):
    base = _ade20k(tmp_path, stems=("a", "b", "c", "d", "e"))
    ds = ADE20KSegmentation(base)
    with open(ds.images[0], "wb") as f:
        f.write(b"\xff\xd8\xff garbage" + os.urandom(100))
    with pytest.raises(OSError, match=re.escape(ds.images[0])):
        ds[0]
    _truncate(ds.images[4])
    with pytest.raises(OSError, match="cannot read image file " + re.escape(ds.images[4])):
        ds[4]
    _write_png(ds.labels[1], np.full((6, 26), 151, dtype=np.uint8))
    with pytest.raises(ValueError, match=re.escape(ds.labels[1]) + r".*\[151\]"):
        ds[1]
    _write_png(ds.labels[2], np.zeros((6, 26, 3), dtype=np.uint8))  # an RGB rendering, not ids
    with pytest.raises(ValueError, match=re.escape(ds.labels[2]) + ".*single-channel"):
        ds[2]
    _write_png(ds.labels[3], np.zeros((5, 26), dtype=np.uint8))
    with pytest.raises(ValueError, match=re.escape(ds.labels[3]) + r".*\(5, 26\)"):
        ds[3]


def test_real_loaders_with_train_transform(tmp_path):
    ds = ADE20KSegmentation(_ade20k(tmp_path), transform=TrainTransform((16, 16)))
    image, label = ds[0]
    assert image.shape == (3, 16, 16) and label.shape == (16, 16)
    assert set(label.unique().tolist()) <= set(range(150)) | {255}


# --------------------------------------------------------------------------------------------------
# Factory


def test_make_dataset_and_info(tmp_path):
    assert set(dataset_names()) >= {"synthetic", "cityscapes", "ade20k"}
    assert dataset_info("synthetic") == (10, 255, SYNTHETIC_CLASSES)
    for bad in ("imagenet", "Cityscapes"):
        with pytest.raises(ValueError, match=f"'synthetic', 'cityscapes', 'ade20k'.*'{bad}'"):
            dataset_info(bad)
        with pytest.raises(ValueError, match=f"'synthetic', 'cityscapes', 'ade20k'.*'{bad}'"):
            make_dataset(bad, "train")
    with pytest.raises(ValueError, match="split.*'training'"):
        make_dataset("synthetic", "training")

    pool = make_dataset("synthetic", "pool", size=3, seed=5)
    assert isinstance(pool, SyntheticScenes) and len(pool) == 3
    assert torch.equal(pool[2][0], SyntheticScenes("pool", 3, seed=5)[2][0])
    assert len(make_dataset("synthetic", "val")) == 50

    root = _cityscapes(tmp_path / "cs", splits=("train", "val"), frames=3)
    _write_png(root / "leftImg8bit" / "val" / "aachen" / "extra_0_0_leftImg8bit.png", np.zeros((8, 36, 3), np.uint8))
    _write_png(root / "gtFine" / "val" / "aachen" / "extra_0_0_gtFine_labelIds.png", np.zeros((8, 36), np.uint8))
    for split, n in (("train", 3), ("pool", 3), ("val", 4)):  # train and pool: the official train split
        ds = make_dataset("cityscapes", split, root=str(root))
        assert isinstance(ds, CityscapesSegmentation) and len(ds) == n
    with pytest.raises(ValueError, match="root"):
        make_dataset("cityscapes", "train")
    _ade20k(tmp_path / "ade", splits=("training", "validation"), stems=("x",))
    assert make_dataset("ade20k", "pool", root=tmp_path / "ade").split == "training"
    assert make_dataset("ade20k", "val", root=tmp_path / "ade").split == "validation"


def test_frames_of_one_scene_are_near_duplicates():
    pool = SyntheticScenes("pool", 24, frames_per_scene=4)
    (first, first_label), (second, second_label) = pool.raw(0), pool.raw(1)
    other, _ = pool.raw(4)  # the next scene
    coarse = torch.nn.functional.avg_pool2d  # a shift of a few pixels barely moves 16x16 cell means

    def distance(a, b):
        return (coarse(a[None], 16) - coarse(b[None], 16)).abs().mean()

    assert distance(first, second) < 0.5 * distance(first, other)
    # The revealed edge of a shifted frame is ignored.
    assert (second_label == IGNORE_INDEX).float().mean() > (first_label == IGNORE_INDEX).float().mean()
    assert pool.raw(1)[0].equal(second) and SyntheticScenes("pool", 24, frames_per_scene=4).raw(1)[0].equal(second)
    assert SyntheticScenes("pool", 24).raw(0)[0].equal(first)  # frame 0 is the plain scene


def test_rare_scale_makes_people_and_signs_rarer():
    _, common = SyntheticScenes("train", 120).class_frequencies()
    _, rare = SyntheticScenes("train", 120, rare_scale=0.2).class_frequencies()
    person, sign = SYNTHETIC_CLASSES.index("person"), SYNTHETIC_CLASSES.index("sign")
    assert rare[person] < 0.5 * common[person] and rare[sign] < common[sign]
    with pytest.raises(ValueError, match="rare_scale"):
        SyntheticScenes("train", 2, rare_scale=1.5)
    with pytest.raises(ValueError, match="frames_per_scene"):
        SyntheticScenes("train", 2, frames_per_scene=0)
    with pytest.raises(ValueError, match="takes the options"):
        make_dataset("cityscapes", "val", root="/nowhere", frames_per_scene=2)
