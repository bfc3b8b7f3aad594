"""ImageNet preparation: layout checks, flat val reorganisation, the integrity scan, pinned subsets and
shards, on small ImageNet-layout fixtures the tests build themselves."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cait.config import DataConfig, ImageNetConfig
from cait.data import ManifestDataset
from cait.manifest import read_manifest
from cait.errors import DataError
from cait.imagenet import ORGANISED_MARKER, inspect_file, organise_val, read_val_labels, scan_imagenet
from cait.shards import ShardDataset, build_shards, pin_subset, read_shard_meta

CLASSES = ["n01440764", "n01443537", "n01484850"]
TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE = 6, 2, 24
# the devkit numbers classes in its own order (ILSVRC2012_ID), not by wnid
DEVKIT_ORDER = ["n01484850", "n01440764", "n01443537"]


def _jpeg_bytes(rng, mode="RGB", size=SIZE) -> bytes:
    import io

    from PIL import Image

    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_imagenet(root: Path, *, oddities: bool = True, flat_val: bool = True, seed: int = 0) -> dict:
    """A small ImageNet: train/<wnid>/ for 3 classes, val/ flat with LOC_val_solution.csv and the devkit's
    ground truth (+ a synsets text file); optionally a CMYK JPEG, a PNG named .JPEG and a truncated JPEG
    in train/. Returns where the oddities are and each val image's class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    odd = {}
    for wnid in CLASSES:
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(TRAIN_PER_CLASS):
            (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg_bytes(rng))
    if oddities:
        cmyk = root / "train" / CLASSES[0] / f"{CLASSES[0]}_0.JPEG"
        cmyk.write_bytes(_jpeg_bytes(rng, mode="CMYK"))
        png = root / "train" / CLASSES[1] / f"{CLASSES[1]}_0.JPEG"
        Image.fromarray(rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)).save(png, "PNG")
        truncated = root / "train" / CLASSES[2] / f"{CLASSES[2]}_0.JPEG"
        payload = _jpeg_bytes(rng, size=64)
        truncated.write_bytes(payload[: len(payload) // 2])
        odd = {"cmyk": f"train/{CLASSES[0]}/{cmyk.name}", "png_as_jpeg": f"train/{CLASSES[1]}/{png.name}",
               "truncated": f"train/{CLASSES[2]}/{truncated.name}"}
    (root / "val").mkdir()
    val_labels = {}
    for n in range(len(CLASSES) * VAL_PER_CLASS):
        stem = f"ILSVRC2012_val_{n + 1:08d}"
        wnid = CLASSES[(n * 2) % len(CLASSES)]  # not grouped by class, as in the archive
        val_labels[stem] = wnid
        folder = root / "val" if flat_val else root / "val" / wnid
        folder.mkdir(exist_ok=True)
        (folder / f"{stem}.JPEG").write_bytes(_jpeg_bytes(rng))
    with (root / "LOC_val_solution.csv").open("w") as handle:
        handle.write("ImageId,PredictionString\n")
        for stem, wnid in val_labels.items():
            handle.write(f"{stem},{wnid} 1 2 20 20 {wnid} 3 3 10 10\n")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{DEVKIT_ORDER.index(w) + 1}\n" for w in val_labels.values()))
    (root / "synsets.txt").write_text("".join(f"{w} some words\n" for w in DEVKIT_ORDER))
    return {"odd": odd, "val_labels": val_labels}


def fixture_config(**over) -> ImageNetConfig:
    base = {"val_labels": "LOC_val_solution.csv",
            "expected": {"classes": len(CLASSES), "train": len(CLASSES) * TRAIN_PER_CLASS,
                         "val": len(CLASSES) * VAL_PER_CLASS}}
    return ImageNetConfig.model_validate({**base, **over})


@pytest.fixture
def imagenet(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "imagenet"
    return root, make_imagenet(root)


def scan(root, **over):
    return scan_imagenet(root, fixture_config(**over), workers=1, progress=False)


# ---------------------------------------------------------------------------------------------
# layout and the flat val folder

def test_flat_val_is_linked_into_class_folders_from_loc_csv(imagenet):
    root, info = imagenet
    manifest, report = scan(root)
    assert report.val_links_made == len(info["val_labels"])
    for stem, wnid in info["val_labels"].items():
        flat, linked = root / "val" / f"{stem}.JPEG", root / "val" / wnid / f"{stem}.JPEG"
        assert flat.is_file() and os.path.samefile(flat, linked)  # a link, not a copy; the flat file stays
    assert (root / "val" / ORGANISED_MARKER).is_file()
    labels = {Path(rel).stem: manifest.classes[label] for rel, label, _ in manifest.splits["val"]}
    assert labels == info["val_labels"]
    assert manifest.classes == CLASSES


def test_devkit_ground_truth_maps_ids_through_synsets(imagenet):
    root, info = imagenet
    manifest, _ = scan(root, val_labels="ILSVRC2012_validation_ground_truth.txt", synsets="synsets.txt",
                       link="symbolic")
    labels = {Path(rel).stem: manifest.classes[label] for rel, label, _ in manifest.splits["val"]}
    assert labels == info["val_labels"]
    linked = root / "val" / CLASSES[0]
    assert all(p.is_symlink() for p in linked.iterdir())


def test_devkit_meta_mat_is_read(imagenet):
    from scipy.io import savemat

    root, info = imagenet
    synsets = np.zeros((len(DEVKIT_ORDER),), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for i, wnid in reversed(list(enumerate(DEVKIT_ORDER))):  # stored out of id order
        synsets[i] = (i + 1, wnid)
    savemat(root / "meta.mat", {"synsets": synsets[::-1]})
    labels = read_val_labels(root / "ILSVRC2012_validation_ground_truth.txt", root / "meta.mat")
    assert labels == info["val_labels"]


def test_reorganising_is_resumable_and_idempotent(imagenet):
    root, info = imagenet
    labels = read_val_labels(root / "LOC_val_solution.csv", None)
    val = root / "val"
    assert organise_val(val, labels, CLASSES) == len(labels)
    inodes = {p: p.stat().st_ino for p in val.glob("n*/*.JPEG")}
    assert organise_val(val, labels, CLASSES) == 0  # done: nothing touched
    assert {p: p.stat().st_ino for p in val.glob("n*/*.JPEG")} == inodes
    # interrupted half-way: the marker is missing and some links are not made yet
    (val / ORGANISED_MARKER).unlink()
    removed = sorted(inodes)[:3]
    for p in removed:
        p.unlink()
    assert organise_val(val, labels, CLASSES) == 3
    assert all(p.is_file() for p in inodes) and (val / ORGANISED_MARKER).is_file()


def test_val_already_in_class_folders_needs_no_ground_truth(tmp_path):
    root = tmp_path / "imagenet"
    make_imagenet(root, flat_val=False, oddities=False)
    manifest, report = scan(root, val_labels=None)
    assert report.val_links_made == 0 and len(manifest.splits["val"]) == len(CLASSES) * VAL_PER_CLASS


# ---------------------------------------------------------------------------------------------
# the integrity scan

def test_oddities_are_reported_and_broken_files_quarantined(imagenet):
    root, info = imagenet
    odd = info["odd"]
    manifest, report = scan(root)
    kinds = {rel: (kind, excluded) for rel, kind, _, excluded in manifest.quarantined}
    assert kinds[odd["cmyk"]] == ("cmyk", False)
    assert kinds[odd["png_as_jpeg"]] == ("png_as_jpeg", False)
    assert kinds[odd["truncated"]] == ("truncated", True)
    listed = {rel for rel, _, _ in manifest.splits["train"]}
    assert odd["cmyk"] in listed and odd["png_as_jpeg"] in listed and odd["truncated"] not in listed
    assert len(listed) == len(CLASSES) * TRAIN_PER_CLASS - 1
    # the summary says what was found and where
    text = report.summary()
    for kind, rel in odd.items():
        assert kind in text and rel in text
    assert report.findings["truncated"] == {"count": 1, "excluded": True, "paths": [odd["truncated"]]}
    assert report.splits["train"]["found"] == len(CLASSES) * TRAIN_PER_CLASS
    assert report.splits["train"]["decoded"] == len(CLASSES) * TRAIN_PER_CLASS
    # quarantined files stay in the manifest file, outside the hash of what is trained on
    assert json.loads(json.dumps(manifest.to_json(".")))["quarantined"]


def test_the_odd_files_decode_into_rgb(imagenet):
    from cait.pixels import decode_rgb

    root, info = imagenet
    for kind in ("cmyk", "png_as_jpeg"):
        assert decode_rgb(root / info["odd"][kind], 32).shape == (32, 32, 3)
    with pytest.raises(DataError, match="cannot decode"):
        decode_rgb(root / info["odd"]["truncated"], 32)


def test_more_kinds_can_be_quarantined(imagenet):
    root, info = imagenet
    manifest, _ = scan(root, exclude=["truncated", "unreadable", "cmyk", "png_as_jpeg"])
    listed = {rel for rel, _, _ in manifest.splits["train"]}
    assert not listed & set(info["odd"].values())


def test_parallel_scan_finds_the_same(imagenet):
    root, _ = imagenet
    serial, _ = scan(root)
    parallel, report = scan_imagenet(root, fixture_config(), workers=2, progress=False)
    assert parallel.hash == serial.hash and parallel.quarantined == serial.quarantined


def test_sampled_decoding_checks_headers_and_pinning_catches_the_rest(imagenet):
    root, info = imagenet
    manifest, report = scan(root, decode_fraction=0.0)
    assert report.splits["train"]["decoded"] == 0
    kinds = {rel: kind for rel, kind, _, _ in manifest.quarantined}
    assert kinds == {info["odd"]["png_as_jpeg"]: "png_as_jpeg"}  # the truncated file has a valid header
    pinned = pin_subset(manifest, train_images=len(manifest.splits["train"]), val_images=0, seed=0, workers=1,
                        progress=False)
    assert info["odd"]["truncated"] not in {rel for rel, _, _ in pinned.splits["train"]}
    assert (info["odd"]["truncated"], "truncated") in {(rel, k) for rel, k, _, _ in pinned.quarantined}


def test_inspect_file_kinds(tmp_path):
    empty = tmp_path / "a.JPEG"
    empty.write_bytes(b"")
    text = tmp_path / "b.JPEG"
    text.write_bytes(b"<html>not found</html>")
    assert inspect_file(str(empty), True) == ("unreadable", "empty file")
    assert inspect_file(str(text), True)[0] == "unreadable"
    assert inspect_file(str(text), False)[0] == "unreadable"
    gray = tmp_path / "g.JPEG"
    gray.write_bytes(_jpeg_bytes(np.random.default_rng(1), mode="L"))
    assert inspect_file(str(gray), True)[0] == "grayscale"


# ---------------------------------------------------------------------------------------------
# bad input: one clear message naming the path and the fix

def test_missing_root_and_splits(tmp_path):
    with pytest.raises(DataError, match=f"data.path {tmp_path / 'nope'}: not a folder"):
        scan(tmp_path / "nope")
    (tmp_path / "root" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"root/val: missing"):
        scan(tmp_path / "root")


def test_empty_class_folder_is_named(imagenet):
    root, _ = imagenet
    (root / "train" / "n09999999").mkdir()
    with pytest.raises(DataError, match=r"empty class folder\(s\): .*train/n09999999; restore"):
        scan(root, expected={"classes": 4, "train": None, "val": None})


def test_wrong_number_of_classes(imagenet):
    root, _ = imagenet
    with pytest.raises(DataError, match=r"train: 3 class folders, expected 1000; .*data.imagenet.expected.classes"):
        scan(root, expected={"classes": 1000})


def test_wrong_number_of_images(imagenet):
    root, _ = imagenet
    with pytest.raises(DataError, match=r"train: 18 images, expected 1281167; .*data.imagenet.expected.train"):
        scan(root, expected={"classes": 3, "train": 1281167, "val": None})


def test_flat_val_without_ground_truth(imagenet):
    root, _ = imagenet
    with pytest.raises(DataError, match=r"val: 6 images lie flat.*data.imagenet.val_labels"):
        scan(root, val_labels=None)


def test_devkit_ground_truth_without_synsets(imagenet):
    root, _ = imagenet
    with pytest.raises(DataError, match=r"ILSVRC2012_validation_ground_truth.txt: .*set data.imagenet.synsets"):
        scan(root, val_labels="ILSVRC2012_validation_ground_truth.txt")


def test_ground_truth_that_does_not_match_the_images_changes_nothing(imagenet):
    root, info = imagenet
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1] + ["ILSVRC2012_val_00000099,n01440764 1 1 2 2"]) + "\n")
    with pytest.raises(DataError, match=r"does not match the images: 1 image\(s\) in .* have no label "
                                        r"\(e\.g\. ILSVRC2012_val_00000006\); 1 label\(s\) have no image"):
        scan(root)
    assert not [p for p in (root / "val").iterdir() if p.is_dir()]  # no half-done reorganisation


def test_ground_truth_naming_unknown_classes(imagenet):
    root, _ = imagenet
    csv = root / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("n01484850", "n04000000"))
    with pytest.raises(DataError, match="names class\\(es\\) n04000000 that train/ does not have"):
        scan(root)


def test_not_a_loc_csv(imagenet):
    root, _ = imagenet
    (root / "LOC_val_solution.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="expected the header ImageId,PredictionString"):
        scan(root)


def test_a_class_with_only_damaged_images(imagenet):
    root, _ = imagenet
    for p in (root / "train" / CLASSES[2]).iterdir():
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match=f"train/{CLASSES[2]} .*every image is damaged"):
        scan(root)


def test_config_rejects_training_on_broken_files_and_full_imagenet_shards():
    from pipelines.params import parse_params
    from cait.errors import ConfigError

    with pytest.raises(ConfigError, match="data.imagenet.exclude: must include truncated"):
        parse_params({"data": {"imagenet": {"exclude": ["unreadable"]}}})
    with pytest.raises(ConfigError, match="data.shards: needs subset.enabled"):
        parse_params({"data": {"source": "imagenet", "path": "/x", "subset": {"enabled": False}}})
    assert DataConfig().curve_defining().keys() == DataConfig().model_dump().keys() - {"path", "workers"}


# ---------------------------------------------------------------------------------------------
# pinned subsets and shards

@pytest.fixture
def scanned(imagenet):
    root, info = imagenet
    manifest, _ = scan(root)
    return manifest, info


def test_pinned_subset_is_chosen_by_seed_and_hashed(scanned):
    manifest, _ = scanned
    a = pin_subset(manifest, train_images=8, val_images=3, seed=0, workers=1, progress=False)
    again = pin_subset(manifest, train_images=8, val_images=3, seed=0, workers=1, progress=False)
    other = pin_subset(manifest, train_images=8, val_images=3, seed=1, workers=1, progress=False)
    assert a.hash == again.hash and a.hash != other.hash
    assert [len(a.splits[s]) for s in ("train", "val")] == [8, 3]
    assert a.content_hashes and a.pinned["from_hash"] == manifest.hash
    order = [rel for rel, _, _ in manifest.splits["train"]]
    assert [order.index(rel) for rel, _, _ in a.splits["train"]] == sorted(order.index(r) for r, _, _ in a.splits["train"])
    for rel, _, digest in a.splits["train"]:
        assert digest == hashlib.sha256((manifest.root / rel).read_bytes()).hexdigest()


def test_pinning_a_whole_hashed_listing_keeps_it(scanned):
    manifest, _ = scanned
    hashed = pin_subset(manifest, train_images=100, val_images=100, seed=0, workers=1, progress=False)
    again = pin_subset(hashed, train_images=100, val_images=100, seed=3, workers=1, progress=False)
    assert again.hash == hashed.hash and again.splits == hashed.splits


def test_pinning_notices_changed_files(scanned):
    manifest, _ = scanned
    hashed = pin_subset(manifest, train_images=100, val_images=0, seed=0, workers=1, progress=False)
    rel = hashed.splits["train"][0][0]
    (manifest.root / rel).write_bytes(_jpeg_bytes(np.random.default_rng(9)))
    with pytest.raises(DataError, match=f"{rel}: content differs from the listing"):
        pin_subset(hashed, train_images=100, val_images=0, seed=0, workers=1, progress=False)


def test_a_split_without_readable_images_cannot_be_pinned(scanned):
    manifest, _ = scanned
    for rel, _, _ in manifest.splits["val"]:
        (manifest.root / rel).write_bytes(b"")
    with pytest.raises(DataError, match=r"val: none of its 6 listed images is readable"):
        pin_subset(manifest, train_images=1, val_images=3, seed=0, workers=1, progress=False)


def test_shards_hold_the_same_pixels_as_the_jpeg_path(scanned, tmp_path):
    manifest, _ = scanned
    pinned = pin_subset(manifest, train_images=10, val_images=4, seed=0, workers=1, progress=False)
    meta = build_shards(pinned, tmp_path / "shards", 32, workers=2, progress=False)
    assert meta["splits"]["train"]["count"] == 10 and read_shard_meta(tmp_path / "shards") == meta
    for split in ("train", "val"):
        jpeg = ManifestDataset(pinned, split, 32)
        shard = ShardDataset(tmp_path / "shards", split, manifest=pinned, img_size=32)
        from_shards = ManifestDataset(pinned, split, 32, shards_dir=tmp_path / "shards")  # what training reads
        assert len(jpeg) == len(shard) == len(from_shards)
        for i in range(len(jpeg)):
            (x, y, *_), (u, v), (s, t, *_) = jpeg[i], shard[i], from_shards[i]
            assert y == v == t and x.dtype == u.dtype == torch.float32 and torch.equal(x, u) and torch.equal(x, s)
        assert shard.pixels(0).dtype == np.uint8 and shard.pixels(0).shape == (32, 32, 3)
    assert isinstance(np.load(tmp_path / "shards" / "train.npy", mmap_mode="r"), np.memmap)


def test_shards_refuse_another_manifest_or_resolution(scanned, tmp_path):
    manifest, _ = scanned
    pinned = pin_subset(manifest, train_images=6, val_images=0, seed=0, workers=1, progress=False)
    other = pin_subset(manifest, train_images=6, val_images=0, seed=5, workers=1, progress=False)
    build_shards(pinned, tmp_path / "shards", 32, workers=1, progress=False)
    with pytest.raises(DataError, match="shards were built from another manifest"):
        ShardDataset(tmp_path / "shards", "train", manifest=other)
    with pytest.raises(DataError, match="shards hold 32px images but training uses 64px"):
        ShardDataset(tmp_path / "shards", "train", img_size=64)
    (tmp_path / "shards" / "meta.json").unlink()
    with pytest.raises(DataError, match="no finished shards"):
        ShardDataset(tmp_path / "shards", "train")


# ---------------------------------------------------------------------------------------------
# the prepare stage: synthetic and ImageNet through the same path into training

def _imagenet_params(project: Path, root: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update({"source": "imagenet", "path": str(root), "workers": 1})
    params["data"]["imagenet"].update({"val_labels": "LOC_val_solution.csv",
                                       "expected": {"classes": 3, "train": 18, "val": 6}})
    params["data"]["subset"]["val_images"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _untracked(project: Path) -> None:
    """No MLflow, and 3 steps: enough to show the path, cheap on a busy machine."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    params["train"].update({"steps": 3, "warmup_steps": 1})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_synthetic_and_imagenet_take_the_same_path_into_training(tiny_project, tmp_path, monkeypatch):
    from pipelines.baselines import baseline_from_run, refusals
    from pipelines.curves import read_curve_csv
    from pipelines.params import load_params
    from pipelines.stages.prepare import prepare
    from pipelines.training import run_training

    _untracked(tiny_project)
    read = []
    original = ShardDataset.pixels
    monkeypatch.setattr(ShardDataset, "pixels", lambda self, i: read.append(self.split) or original(self, i))
    import cait.data
    records = {}
    for source in ("synthetic", "imagenet"):
        if source == "imagenet":
            root = tmp_path / "imagenet"
            make_imagenet(root)
            _imagenet_params(tiny_project, root)
        params = load_params()
        prepare(params, quiet=True)
        manifest = read_manifest("data/prepared")
        # 3 steps x batch 8 = 24 pinned images (synthetic has 64, the fixture 17 usable: all of them)
        expected_train = 24 if source == "synthetic" else 17
        assert len(manifest.splits["train"]) == expected_train and manifest.content_hashes and manifest.pinned
        assert read_shard_meta("data/prepared/shards")["manifest_hash"] == manifest.hash
        read.clear()
        with monkeypatch.context() as patch:
            for decoder in ("decode_rgb", "open_rgb"):
                patch.setattr(cait.data, decoder, lambda *a, **k: pytest.fail("decoded a JPEG in training"))
            curve, record_path = run_training(params, tiny_project / "reports" / source)
        record = json.loads(record_path.read_text())
        assert record["data_input"] == "shards" and record["data_source"] == source
        assert record["data_manifest_hash"] == manifest.hash
        assert len(read) == params.train.steps * params.train.batch_size and set(read) == {"train"}
        records[source] = (curve, record)
    assert (tiny_project / "data/prepared/scan.json").is_file()
    # a baseline made from the synthetic images refuses the ImageNet run: other data
    curve, record = records["synthetic"]
    baseline = baseline_from_run(read_curve_csv(curve), record, "default", "test")
    reasons = refusals(baseline, "default", records["imagenet"][1])
    assert "baseline was made from other data (data manifest hash differs)" in reasons


def test_prepare_failure_keeps_the_previous_data(tiny_project, tmp_path):
    from pipelines.params import load_params
    from pipelines.stages.prepare import prepare

    prepare(load_params(), quiet=True)
    before = (tiny_project / "data/prepared/manifest.json").read_text()
    root = tmp_path / "imagenet"
    make_imagenet(root)
    (root / "train" / "n02000000").mkdir()
    _imagenet_params(tiny_project, root)
    with pytest.raises(DataError, match="train: 4 class folders, expected 3"):
        prepare(load_params(), quiet=True)
    assert (tiny_project / "data/prepared/manifest.json").read_text() == before


def test_scan_cache_rechecks_only_changed_files(imagenet, tmp_path):
    root, info = imagenet
    cache = tmp_path / "cache"
    first, report = scan_imagenet(root, fixture_config(), workers=1, progress=False, cache_dir=cache, chunk=5)
    assert report.splits["train"]["from_cache"] == 0 and len(list(cache.iterdir())) == 1
    again, report = scan_imagenet(root, fixture_config(), workers=1, progress=False, cache_dir=cache)
    assert report.splits["train"]["from_cache"] == 18 and report.splits["val"]["from_cache"] == 6
    assert again.hash == first.hash and again.quarantined == first.quarantined
    damaged = root / "train" / CLASSES[0] / f"{CLASSES[0]}_3.JPEG"
    damaged.write_bytes(damaged.read_bytes()[:200])
    changed, report = scan_imagenet(root, fixture_config(), workers=1, progress=False, cache_dir=cache)
    assert report.splits["train"]["from_cache"] == 17
    assert f"train/{CLASSES[0]}/{damaged.name}" in {rel for rel, _, _, excluded in changed.quarantined if excluded}
    # a header-only cache entry does not stand in for a full decode
    other = tmp_path / "cache2"
    scan_imagenet(root, fixture_config(decode_fraction=0.0), workers=1, progress=False, cache_dir=other)
    _, report = scan_imagenet(root, fixture_config(), workers=1, progress=False, cache_dir=other)
    assert report.splits["train"]["from_cache"] == 0


def test_a_baseline_with_other_pixels_from_the_same_files_is_refused():
    from pipelines.baselines import Baseline, refusals

    from pipelines.baselines import curve_hash

    params = {"model": {"name": "cait_XXS24_224"}, "train": {"seed": 0}}
    record = {"params_hash": curve_hash(params), "curve_params": params, "data_manifest_hash": "m",
              "data_pixels_hash": "a"}
    baseline = Baseline("default", "cait_XXS24_224", np.arange(3), np.ones(3),
                        {"params_hash": curve_hash(params), "params": params, "seed": 0,
                         "data_manifest_hash": "m", "data_pixels_hash": "b"})
    assert refusals(baseline, "default", record) == [
        "baseline saw other pixels from the same files (shard pixel hash differs: another image decoder); "
        "share data/prepared/shards between the machines (dvc push / dvc pull)"]
    assert refusals(baseline, "default", {**record, "data_pixels_hash": "b"}) == []
    assert refusals(baseline, "default", {**record, "data_pixels_hash": ""}) == []  # a run from JPEGs


def test_the_report_times_the_whole_scan(imagenet):
    root, _ = imagenet
    _, report = scan_imagenet(root, fixture_config(), workers=1, progress=False, chunk=4)
    assert 0 < report.seconds < 60 and report.to_json()["images_per_s"] > 0
