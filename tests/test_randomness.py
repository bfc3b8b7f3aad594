"""Device-independent randomness: every draw of the training path is keyed by (seed, step, position).

Proved here on CPU: the input batches (after the full DeiT augmentation and Mixup/CutMix) and the
drop-path masks hash identically with 0 and 2 loader workers and with 1 and 2 threads; the sampler's
batches do not depend on how many processes share the global batch or where a resumed run starts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cait.augment import DropPathKeys, batch_hash, keyed_rng
from cait.config import AugmentConfig, MixupConfig, TrainConfig
from cait.data import StepBatchSampler, train_loader
from cait.manifest import read_manifest
from cait.errors import ConfigError
from cait.synthetic import SyntheticSpec, write_synthetic

FULL_AUGMENT = AugmentConfig(random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
FULL_MIXUP = MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "prepared"
    write_synthetic(folder, SyntheticSpec(num_classes=4, image_size=32), seed=0, train_per_class=16,
                    val_per_class=4, jpeg_quality=90)
    return read_manifest(folder)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def batches(manifest, *, num_workers: int, steps: int = 4, augment=FULL_AUGMENT, mixup=FULL_MIXUP):
    loader = train_loader(manifest, img_size=32, batch_size=8, steps=steps, seed=3, num_workers=num_workers,
                          augment=augment, mixup=mixup, smoothing=0.1)
    return [(b.step, b.hash, b.images.clone(), b.targets.clone()) for b in loader]


def reference_and_variants(run, manifest, threads):
    """`run` with 1 thread and no loader workers (the reference), with 2 workers, and with 2 threads."""
    threads(1)
    reference = run(manifest, num_workers=0)
    with_workers = run(manifest, num_workers=2)
    threads(2)
    return reference, with_workers, run(manifest, num_workers=0)


def test_augmented_batches_do_not_depend_on_workers_or_threads(manifest, threads):
    reference, with_workers, with_threads = reference_and_variants(batches, manifest, threads)
    for other in (with_workers, with_threads):
        assert [(s, h) for s, h, _, _ in other] == [(s, h) for s, h, _, _ in reference]
        for (_, _, images, targets), (_, _, ref_images, ref_targets) in zip(other, reference):
            assert torch.equal(images, ref_images) and torch.equal(targets, ref_targets)
    # the augmentation is really on: the same images without it hash differently, and every step differs
    plain = batches(manifest, num_workers=0, augment=AugmentConfig(), mixup=MixupConfig())
    assert all(p[1] != r[1] for p, r in zip(plain, reference))
    assert len({h for _, h, _, _ in reference}) == len(reference)
    assert reference[0][3].dtype == torch.float32  # Mixup/CutMix gave soft targets


def test_global_generators_are_not_used(manifest):
    """Reseeding torch's, numpy's and Python's global generators changes nothing."""
    import random

    first = [h for _, h, _, _ in batches(manifest, num_workers=0, steps=2)]
    torch.manual_seed(12345)
    np.random.seed(999)
    random.seed(42)
    assert [h for _, h, _, _ in batches(manifest, num_workers=0, steps=2)] == first


def run_loop(manifest, *, num_workers: int, steps: int = 2):
    """Two real training steps with drop path 0.1; rows carry the batch and drop-path mask hashes."""
    from cait.models import build_model
    from cait.train import train

    cfg = TrainConfig(steps=steps, batch_size=8, warmup_steps=1, num_workers=num_workers,
                      augment=FULL_AUGMENT, mixup=FULL_MIXUP, label_smoothing=0.1)
    torch.manual_seed(0)
    model = build_model("cait_XXS24_224", img_size=32, num_classes=4, drop_path=0.1)

    def make_loader(start_step):
        return train_loader(manifest, img_size=32, batch_size=8, steps=steps, seed=cfg.seed, num_workers=num_workers,
                            augment=cfg.augment, mixup=cfg.mixup, smoothing=cfg.label_smoothing,
                            start_step=start_step)

    return train(model, make_loader, torch.device("cpu"), cfg, steps_per_epoch=8).rows


def test_training_inputs_and_drop_path_masks_hash_the_same(manifest, threads):
    reference, with_workers, with_threads = reference_and_variants(run_loop, manifest, threads)
    keys = ("step", "batch_hash", "drop_path_hash")
    for other in (with_workers, with_threads):
        assert [[r[k] for k in keys] for r in other] == [[r[k] for k in keys] for r in reference]
    # same threads, different workers: the arithmetic is the same too, so the losses are bitwise equal
    assert [r["loss"] for r in with_workers] == [r["loss"] for r in reference]
    assert len({r["drop_path_hash"] for r in reference}) == len(reference)  # masks change every step


def test_sampler_splits_the_global_batch_and_resumes_anywhere():
    single = list(StepBatchSampler(64, 8, 20, seed=5))
    ranks = [list(StepBatchSampler(64, 4, 20, seed=5, rank=r, world_size=2)) for r in range(2)]
    for step, keys in enumerate(single):
        split = sorted(ranks[0][step] + ranks[1][step], key=lambda k: k.position)
        assert [(k.index, k.position) for k in split] == [(k.index, k.position) for k in keys]
        assert all(k.step == step for k in keys)
    assert list(StepBatchSampler(64, 8, 20, seed=5, start_step=13)) == single[13:]
    # epoch 0 covers every image once; epoch 1 is a different order
    per_epoch = 64 // 8
    assert sorted(k.index for b in single[:per_epoch] for k in b) == list(range(64))
    assert [k.index for k in single[per_epoch]] != [k.index for k in single[0]]


def test_repeated_augmentation_puts_the_copies_on_different_ranks():
    ranks = [list(StepBatchSampler(64, 6, 4, seed=1, rank=r, world_size=3, repeats=3)) for r in range(3)]
    for step in range(4):
        indices = [{k.index for k in ranks[r][step]} for r in range(3)]
        assert indices[0] == indices[1] == indices[2]  # each rank sees its own copy of the same images


def test_drop_path_masks_split_by_position():
    whole = DropPathKeys(seed=0, global_batch=8)
    whole.begin_step(7, np.arange(8))
    full = [whole.mask(0.9) for _ in range(3)]
    for rank in range(2):
        part = DropPathKeys(seed=0, global_batch=8)
        part.begin_step(7, np.arange(rank, 8, 2))
        for call in range(3):
            assert np.array_equal(part.mask(0.9), full[call][rank::2])
    assert not all(np.array_equal(full[0], m) for m in full[1:])


def test_batch_hash_ignores_how_the_batch_was_split():
    hashes = keyed_rng(0, 9).integers(-2 ** 63, 2 ** 63 - 1, size=8, dtype=np.int64)
    positions = np.arange(8)
    split = np.concatenate([positions[0::2], positions[1::2]])
    assert batch_hash(split, hashes[split]) == batch_hash(positions, hashes)
    assert batch_hash(positions, hashes[::-1]) != batch_hash(positions, hashes)


def test_bad_rand_augment_string_is_a_config_error():
    from pipelines.params import parse_params

    with pytest.raises(ConfigError, match=r"train\.augment\.rand_augment.*unknown part 'q7'"):
        parse_params({"train": {"augment": {"rand_augment": "rand-m9-q7"}}})


def test_curve_file_keeps_the_batch_hash_and_old_curves_still_read(tmp_path):
    from pipelines.curves import read_curve_csv, write_curve_csv

    rows = [{"step": s, "loss": 1.0 / (s + 3), "lr": 0.1, "samples_per_s": 5.0, "elapsed_s": float(s),
             "batch_hash": f"{s:016x}"} for s in range(3)]
    write_curve_csv(tmp_path / "curve.csv", rows)
    curve = read_curve_csv(tmp_path / "curve.csv")
    assert list(curve.extra["batch_hash"]) == [r["batch_hash"] for r in rows]
    assert list(curve.loss) == [r["loss"] for r in rows]
    old = tmp_path / "old.csv"
    old.write_text("step,loss,lr,samples_per_s,elapsed_s\n0,2.5,0.1,5.0,1.0\n1,2.4,0.1,5.0,2.0\n")
    assert list(read_curve_csv(old).loss) == [2.5, 2.4] and "batch_hash" not in read_curve_csv(old).extra


def test_rand_augment_handles_every_op_at_full_magnitude():
    """Every op of rand-m10 (magnitude noise off) runs on a real image, Posterize's 0-bit level included."""
    from PIL import Image

    from cait.augment import KeyedRandAugment

    augment = KeyedRandAugment("rand-m10-n1-p1.0-inc1", img_size=32)
    image = Image.new("RGB", (32, 32), (90, 140, 200))
    seen = set()
    for key in range(200):
        rng = keyed_rng(0, 99, key)
        seen.add(augment.names[int(keyed_rng(0, 99, key).choice(len(augment.names), 1)[0])])
        assert augment(image, rng).size == (32, 32)
    assert seen == set(augment.names)


def test_sample_hash_keeps_its_meaning_and_the_thread_gives_the_same():
    """The hashes are BLAKE2b of (dtype name, bytes) as curves recorded before hold them: read in place
    now, and computed in a thread in the main process, the values are the same."""
    import hashlib

    from cait.augment import sample_hash
    from cait.data import hash_in_thread, hash_samples

    def recorded_before(*arrays):  # the definition the batch_hash column was written with
        h = hashlib.blake2b(digest_size=8)
        for a in arrays:
            h.update(str(a.numpy().dtype).encode())
            h.update(np.ascontiguousarray(a.numpy()).tobytes())
        value = int(h.hexdigest(), 16)
        return value - (1 << 64) if value >= 1 << 63 else value

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 8, 8, generator=generator)
    for targets in (torch.tensor([0, 1, 2]), torch.rand(3, 4, generator=generator)):  # labels, soft targets
        expected = [recorded_before(images[i], targets[i]) for i in range(3)]
        assert [sample_hash(images[i], targets[i]) for i in range(3)] == expected
        assert hash_samples(images, targets).tolist() == expected
        assert hash_in_thread(images, targets).result().tolist() == expected


def test_a_changed_pixel_or_augmentation_draw_changes_the_batch_hash(manifest, monkeypatch):
    from cait.augment import SampleTransform, keyed_rng
    from cait.data import CollateBatch, ManifestDataset, SampleKey

    dataset = ManifestDataset(manifest, "train", 32, augment=FULL_AUGMENT, seed=3)
    keys = [SampleKey(index, 5, position) for position, index in enumerate(range(8))]
    collate = CollateBatch(mixup=FULL_MIXUP, num_classes=4, smoothing=0.1, seed=3)
    reference = collate([dataset[k] for k in keys])
    assert collate([dataset[k] for k in keys]).hash == reference.hash  # deterministic

    # one float of one sample one ulp away
    samples = [dataset[k] for k in keys]
    image = samples[6][0].clone()
    image[1, 17, 9] = torch.nextafter(image[1, 17, 9], torch.tensor(float("inf")))
    samples[6] = (image, *samples[6][1:])
    assert collate(samples).hash != reference.hash

    # the augmentation draws of one sample (position 2) from another generator; the rest as before
    rng = SampleTransform.rng
    monkeypatch.setattr(SampleTransform, "rng", lambda self, step, position: keyed_rng(self.seed, 1, step, position, 1)
                        if position == 2 else rng(self, step, position))
    changed = collate([dataset[k] for k in keys])
    assert not torch.equal(changed.images[2], reference.images[2]) and changed.hash != reference.hash
    monkeypatch.undo()

    # the Mixup/CutMix draw of the step (keyed by the seed)
    remixed = CollateBatch(mixup=FULL_MIXUP, num_classes=4, smoothing=0.1, seed=4)([dataset[k] for k in keys])
    assert remixed.hash != reference.hash
