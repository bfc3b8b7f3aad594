"""The synthetic dataset is byte-identical for a seed, and the manifest pins it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cait.config import ImageNetConfig
from cait.data import ManifestDataset, StepBatchSampler
from cait.manifest import MANIFEST_NAME, read_manifest
from cait.errors import DataError
from cait.synthetic import SyntheticSpec, bayes_floor, render_image, write_synthetic

SPEC = SyntheticSpec(num_classes=3, image_size=32)


def write(folder, seed=0):
    return write_synthetic(folder, SPEC, seed=seed, train_per_class=5, val_per_class=2, jpeg_quality=90)


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a, b, c = write(tmp_path / "a"), write(tmp_path / "b"), write(tmp_path / "c", seed=1)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert a.hash == b.hash != c.hash
    assert files(tmp_path / "a").keys() == files(tmp_path / "c").keys()


def test_imagenet_layout_and_manifest(tmp_path):
    manifest = write(tmp_path / "d")
    assert manifest.classes == ["n90000000", "n90000001", "n90000002"]
    assert len(manifest.splits["train"]) == 15 and len(manifest.splits["val"]) == 6
    assert (tmp_path / "d/train/n90000001/n90000001_4.JPEG").is_file()
    assert (tmp_path / "d/val/n90000002/ILSVRC2012_val_00000006.JPEG").is_file()
    again = read_manifest(tmp_path / "d")
    assert again.hash == manifest.hash and again.root == (tmp_path / "d").resolve()
    assert not (tmp_path / "d.partial").exists()


def test_the_same_loader_reads_an_imagenet_folder(tmp_path):
    write(tmp_path / "in")
    (tmp_path / "in" / MANIFEST_NAME).unlink()
    from cait.imagenet import scan_imagenet

    cfg = ImageNetConfig(expected={"classes": 3, "train": 15, "val": 6})
    manifest, report = scan_imagenet(tmp_path / "in", cfg, workers=1, progress=False)
    assert manifest.source == "imagenet" and len(manifest.splits["train"]) == 15
    image, label, *_ = ManifestDataset(manifest, "train", 32)[7]
    assert tuple(image.shape) == (3, 32, 32) and label == 1


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    write(tmp_path / "m")
    path = tmp_path / "m" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["splits"]["train"][0][1] = 2  # a label edited by hand
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="manifest hash does not match"):
        read_manifest(tmp_path / "m")
    path.write_text(path.read_text()[:100])
    with pytest.raises(DataError, match="corrupt data manifest"):
        read_manifest(tmp_path / "m")
    with pytest.raises(DataError, match="run the prepare stage"):
        read_manifest(tmp_path / "nowhere")


def test_unreadable_image_names_the_file(tmp_path):
    manifest = write(tmp_path / "u")
    bad = tmp_path / "u" / manifest.splits["train"][0][0]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=str(bad.name)):
        ManifestDataset(read_manifest(tmp_path / "u"), "train", 32)[0]


def test_sampler_order_depends_only_on_seed_and_epoch():
    def indices(sampler):
        return [[key.index for key in batch] for batch in sampler]

    a = indices(StepBatchSampler(10, 3, 7, seed=5))
    assert a == indices(StepBatchSampler(10, 3, 7, seed=5))
    assert a != indices(StepBatchSampler(10, 3, 7, seed=6))
    assert sorted(sum(a[:3], [])) == sorted(set(sum(a[:3], [])))  # no repeats inside an epoch
    with pytest.raises(DataError, match="batch_size"):
        StepBatchSampler(4, 8, 1, seed=0)


def test_renderer_is_pure_and_label_noise_sets_a_floor():
    one = render_image(SPEC, 3, "train", 2, 11)
    assert one.dtype == np.uint8 and one.shape == (32, 32, 3)
    assert np.array_equal(one, render_image(SPEC, 3, "train", 2, 11))
    assert not np.array_equal(one, render_image(SPEC, 3, "val", 2, 11))
    assert 0.9 < bayes_floor(SyntheticSpec()) < 1.0
