"""Deterministic, class-conditional synthetic images for the CaiT regression harness, and the writer of
their ImageNet-layout dataset (`write_synthetic`: JPEGs, the manifest).

Each class is an *orientation*: class ``k`` shows a sinusoidal grating whose
stripes lie at ``k * 180 / num_classes`` degrees (plus a small jitter).  That is
the only thing the label controls, so a model has to learn orientation
selectivity -- something a patch-16 ViT picks up gradually rather than in a
handful of steps.

Everything else is nuisance, drawn fresh for every image:

* spatial frequency, phase and orientation jitter of the grating;
* the colours (a random mean colour plus a random colour axis along which the
  stripes modulate), so colour carries no class information;
* contrast, and additive Gaussian pixel noise;
* a fainter distractor grating at a uniformly random orientation.

The loss floor is set by a known ambiguity: with probability ``label_noise``
the image shows the pattern of a different class (uniform over the other
``num_classes - 1``) while keeping its own label.  Even a perfect observer then
cannot beat the cross-entropy returned by :func:`bayes_floor`.

Every image is a pure function of ``(spec, seed, split, class_index,
sample_index)``: it gets its own ``numpy`` generator seeded with those keys, so
rendering order and parallelism do not matter.
"""

from __future__ import annotations

import hashlib
import io
import math
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cait.files import replace_folder
from cait.manifest import Manifest, write_manifest

_SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticSpec:
    """How the images look; params.yaml's data.synthetic.pattern (pydantic rejects unknown keys)."""

    __pydantic_config__ = {"extra": "forbid", "strict": True, "allow_inf_nan": False}  # as cait.config.Section

    num_classes: int = 10
    image_size: int = 64
    label_noise: float = 0.2  # P(image shows another class's pattern)
    orient_jitter_deg: float = 4.0  # +- uniform jitter around the class angle
    freq_min: float = 3.0  # grating frequency, cycles per image width
    freq_max: float = 8.0
    contrast_min: float = 0.15  # stripe amplitude, in [0, 1] intensity units
    contrast_max: float = 0.45
    distractor_ratio: float = 0.5  # distractor amplitude / grating amplitude
    noise_std: float = 0.12  # additive Gaussian noise, [0, 1] intensity units

    def __post_init__(self):
        checks = [
            (self.num_classes >= 2, "num_classes: must be at least 2"),
            (self.image_size >= 8, "image_size: must be at least 8"),
            (0.0 <= self.label_noise < 1.0, "label_noise: must be in [0, 1)"),
            (0.0 < self.freq_min <= self.freq_max, "freq_min: must be > 0 and <= freq_max"),
            (0.0 <= self.contrast_min <= self.contrast_max, "contrast_min: must be >= 0 and <= contrast_max"),
            (self.distractor_ratio >= 0.0, "distractor_ratio: must be >= 0"),
            (self.noise_std >= 0.0, "noise_std: must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) / size
    return c[None, :], c[:, None]  # x (1, W), y (H, 1), in image widths


def _grating(size: int, theta: float, freq: float, phase: float) -> np.ndarray:
    x, y = _grid(size)
    k = np.float32(2.0 * math.pi * freq)
    arg = (k * math.cos(theta)) * x + (k * math.sin(theta)) * y + np.float32(phase)
    return np.sin(arg, dtype=np.float32)


def render_image(
    spec: SyntheticSpec, seed: int, split: str, class_index: int, sample_index: int
) -> np.ndarray:
    """HxWx3 uint8 image (H=W=spec.image_size). Pure function of its arguments."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not 0 <= class_index < spec.num_classes:
        raise ValueError(f"class_index {class_index} out of range")
    rng = np.random.default_rng(
        [int(seed), _SPLIT_CODES[split], int(class_index), int(sample_index)]
    )
    n, size = spec.num_classes, spec.image_size

    shown = class_index
    if rng.random() < spec.label_noise and n > 1:
        shown = (class_index + 1 + int(rng.integers(n - 1))) % n

    jitter = math.radians(spec.orient_jitter_deg) * (2.0 * rng.random() - 1.0)
    theta = math.pi * shown / n + jitter
    freq = rng.uniform(spec.freq_min, spec.freq_max)
    amp = rng.uniform(spec.contrast_min, spec.contrast_max)
    pattern = _grating(size, theta, freq, rng.uniform(0.0, 2.0 * math.pi))

    d_theta = rng.uniform(0.0, math.pi)
    d_freq = rng.uniform(spec.freq_min, spec.freq_max)
    pattern += np.float32(spec.distractor_ratio) * _grating(
        size, d_theta, d_freq, rng.uniform(0.0, 2.0 * math.pi)
    )

    mean = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
    axis = rng.normal(size=3).astype(np.float32)
    axis /= np.linalg.norm(axis) / math.sqrt(3.0) + 1e-6  # unit RMS per channel
    img = mean + np.float32(amp) * pattern[:, :, None] * axis
    img += rng.normal(0.0, spec.noise_std, size=img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def bayes_floor(spec: SyntheticSpec) -> float:
    """Lowest achievable mean cross-entropy (nats) given only the label noise.

    Assumes the shown pattern is perfectly identifiable; the nuisances can only
    raise the real floor above this value.
    """
    p, n = spec.label_noise, spec.num_classes
    if n < 2 or p <= 0.0:
        return 0.0
    return -(1.0 - p) * math.log(1.0 - p) - p * math.log(p / (n - 1))


# ---- the dataset on disk -------------------------------------------------------------------------

def synthetic_wnid(class_index: int) -> str:
    """WordNet-shaped ids that cannot clash with real ImageNet classes (those start n0/n1)."""
    return f"n9{class_index:07d}"


def write_synthetic(out_dir: Path | str, spec, *, seed: int, train_per_class: int, val_per_class: int,
                    jpeg_quality: int, on_image=None) -> Manifest:
    """Write the synthetic dataset as JPEGs in the ImageNet layout, byte-identical for the same seed.

    `on_image()` is called after each image is written (progress reporting).

    Written into a temporary sibling folder and renamed into place at the end, so an interrupted
    run never leaves a folder that looks complete.
    """
    from PIL import Image


    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    classes = [synthetic_wnid(c) for c in range(spec.num_classes)]
    splits: dict[str, list[tuple[str, int, str]]] = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        entries = []
        for label, wnid in enumerate(classes):
            (tmp_dir / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{label * per_class + i + 1:08d}.JPEG"
                rel = f"{split}/{wnid}/{name}"
                buf = io.BytesIO()
                Image.fromarray(render_image(spec, seed, split, label, i)).save(buf, "JPEG", quality=jpeg_quality)
                payload = buf.getvalue()
                (tmp_dir / rel).write_bytes(payload)
                entries.append((rel, label, hashlib.sha256(payload).hexdigest()))
                if on_image is not None:
                    on_image()
        splits[split] = entries
    manifest = Manifest("synthetic", out_dir.resolve(), classes, splits, content_hashes=True)
    write_manifest(manifest, tmp_dir, ".")
    replace_folder(tmp_dir, out_dir)
    return manifest
