"""Training augmentation whose every random draw comes from a keyed CPU generator.

A draw is keyed by (seed, purpose, step, position in the global batch, ...) and made with its own
`numpy.random.Generator`, never with torch's, numpy's or Python's global generators and never on the
device. So the images, their augmentations, Mixup/CutMix and the drop-path masks are the same
whatever the device, the number of loader workers or threads, and (for the data) the number of
processes sharing the global batch.

The image operations and their magnitude tables are timm's (`timm.data.auto_augment`); only the
draws (which op, whether it fires, magnitude noise, sign) are made here, in the order timm makes them.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

# What a generator is for: the second element of every key, so two purposes never share a stream.
PURPOSE_SAMPLE = 1  # per-image augmentation
PURPOSE_MIXUP = 2  # per-batch Mixup/CutMix
PURPOSE_DROP_PATH = 3  # per-call drop-path masks


def keyed_rng(seed: int, purpose: int, *key: int) -> np.random.Generator:
    """A generator determined by the key alone (numpy's SeedSequence mixes the integers)."""
    return np.random.default_rng([seed, purpose, *key])


def digest(*arrays) -> str:
    """A short content hash (BLAKE2b, 64 bits) of arrays or tensors, as 16 hex digits: each one's dtype name,
    then its bytes in C order. The bytes are read in place (no copy), and hashlib lets other threads run
    meanwhile, so a batch can be hashed in a thread beside the training step (cait.data.CollateBatch)."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = a.numpy() if hasattr(a, "numpy") else np.asarray(a)
        h.update(str(a.dtype).encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def sample_hash(image, target) -> int:
    """64-bit content hash of one sample as a signed int64 (fits a tensor)."""
    value = int(digest(image, target), 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def batch_hash(positions, sample_hashes) -> str:
    """Hash of a global batch from its samples' hashes taken in position order: the same whether the
    batch was loaded by one process or split over several."""
    order = np.argsort(np.asarray(positions), kind="stable")
    return digest(np.asarray(sample_hashes, dtype=np.int64)[order])


# ---- RandAugment ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    increasing: bool = False


def parse_rand_augment(config: str) -> RandAugmentSpec:
    """Parse timm's RandAugment string (`rand-m9-mstd0.5-inc1`); a bad part is a ValueError naming it."""
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment string {config!r} must start with 'rand-' (e.g. rand-m9-mstd0.5-inc1)")
    values = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d+)?)", part)
        if not match:
            raise ValueError(f"RandAugment string {config!r}: unknown part {part!r} (known: m, n, p, mstd, mmax, inc)")
        values[match.group(1)] = float(match.group(2))
    mstd = values.get("mstd", 0.0)
    return RandAugmentSpec(magnitude=values.get("m", 10.0), num_layers=int(values.get("n", 2)),
                           prob=values.get("p", 0.5), magnitude_std=math.inf if mstd > 100 else mstd,
                           magnitude_max=values.get("mmax", 10.0), increasing=bool(values.get("inc", 0)))


# Ops whose timm level function flips the sign at random: we draw the sign ourselves.
_SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
_SIGNED_ENHANCE = {"ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"}


class KeyedRandAugment:
    """timm's RandAugment (ops, levels, fill, bicubic) with the draws taken from a given generator."""

    def __init__(self, config: str, img_size: int, mean=(0.485, 0.456, 0.406)):
        from PIL import Image
        from timm.data import auto_augment as aa

        self.spec = parse_rand_augment(config)
        self.names = list(aa._RAND_INCREASING_TRANSFORMS if self.spec.increasing else aa._RAND_TRANSFORMS)
        # as timm's create_transform builds them for DeiT: fill with the mean colour, bicubic resampling
        self.hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
        self.kwargs = {"fillcolor": self.hparams["img_mean"], "resample": Image.BICUBIC}
        self.ops = {n: aa.NAME_TO_OP[n] for n in self.names}
        self.levels = {n: aa.LEVEL_TO_ARG[n] for n in self.names}

    def _level_args(self, name: str, magnitude: float, rng: np.random.Generator) -> tuple:
        level_fn = self.levels[name]
        if level_fn is None:
            return ()
        value = level_fn(magnitude, self.hparams)[0]
        if name in _SIGNED:
            return (abs(value) * (-1.0 if rng.random() > 0.5 else 1.0),)
        if name in _SIGNED_ENHANCE:
            delta = abs(value - 1.0)
            return (max(0.1, 1.0 + (-delta if rng.random() > 0.5 else delta)),)
        if name.startswith("Posterize"):
            # magnitude 10 asks for 0 bits, which Pillow >= 10 rejects (timm passes it through): keep 1 bit
            return (max(1, value),)
        return (value,)

    def __call__(self, img, rng: np.random.Generator):
        spec = self.spec
        for index in rng.choice(len(self.names), spec.num_layers, replace=True):
            name = self.names[index]
            if spec.prob < 1.0 and rng.random() > spec.prob:
                continue
            magnitude = spec.magnitude
            if spec.magnitude_std == math.inf:
                magnitude = rng.uniform(0, magnitude)
            elif spec.magnitude_std > 0:
                magnitude = rng.normal(magnitude, spec.magnitude_std)
            magnitude = max(0.0, min(magnitude, spec.magnitude_max))
            img = self.ops[name](img, *self._level_args(name, magnitude, rng), **self.kwargs)
        return img


# ---- geometric crops and random erasing --------------------------------------------------------------

def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) as torchvision's RandomResizedCrop.get_params picks it, with our generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height  # fallback: the central crop of the allowed aspect ratios
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_erase(chw: np.ndarray, rng: np.random.Generator, mode: str = "pixel",
                 area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3))) -> None:
    """timm's RandomErasing (one box, in place on a normalised CHW float32 array)."""
    channels, height, width = chw.shape
    for _ in range(10):
        target_area = rng.uniform(*area) * height * width
        aspect = math.exp(rng.uniform(*log_ratio))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            if mode == "pixel":
                chw[:, top:top + h, left:left + w] = rng.standard_normal((channels, h, w), dtype=np.float32)
            else:
                chw[:, top:top + h, left:left + w] = 0.0
            return


class SampleTransform:
    """Decoded PIL image -> augmented PIL image for one (step, position) key; then the caller normalises.

    Order as DeiT's timm transform: RandomResizedCrop, flip, RandAugment (tensor ops and random erasing
    follow in `erase`).
    """

    def __init__(self, cfg, img_size: int, seed: int):
        self.cfg, self.img_size, self.seed = cfg, img_size, seed
        self.rand_augment = KeyedRandAugment(cfg.rand_augment, img_size) if cfg.rand_augment else None

    def rng(self, step: int, position: int) -> np.random.Generator:
        return keyed_rng(self.seed, PURPOSE_SAMPLE, step, position)

    def image(self, img, rng: np.random.Generator):
        from PIL import Image

        size = self.img_size
        if self.cfg.random_resized_crop:
            left, top, w, h = random_resized_crop_box(img.width, img.height, rng, self.cfg.crop_scale)
            img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
        elif img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        if self.cfg.hflip > 0 and rng.random() < self.cfg.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        return img

    def erase(self, chw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.cfg.reprob > 0 and rng.random() < self.cfg.reprob:
            random_erase(chw, rng, self.cfg.remode)
        return chw


# ---- Mixup / CutMix ----------------------------------------------------------------------------------

def one_hot_smoothed(labels, num_classes: int, smoothing: float):
    import torch

    off = smoothing / num_classes
    target = torch.full((len(labels), num_classes), off, dtype=torch.float32)
    target.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)
    return target


def mix_batch(images, labels, cfg, *, num_classes: int, smoothing: float, seed: int, step: int):
    """timm's Mixup in `batch` mode (pairs each image with the batch flipped), drawn from (seed, step).

    Returns (images, soft targets). Runs on the CPU batch, before it goes to the device.
    """
    rng = keyed_rng(seed, PURPOSE_MIXUP, step)
    lam, use_cutmix = 1.0, False
    if rng.random() < cfg.prob:
        if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
            use_cutmix = rng.random() < cfg.switch_prob
            alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        else:
            use_cutmix = cfg.cutmix_alpha > 0
            alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
    if lam != 1.0:
        flipped = images.flip(0)
        if use_cutmix:
            height, width = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            cut_h, cut_w = int(height * cut), int(width * cut)
            cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
            y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
            x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)  # timm's correct_lam
        else:
            images = images * lam + flipped * (1.0 - lam)
    target = one_hot_smoothed(labels, num_classes, smoothing)
    return images, target * lam + target.flip(0) * (1.0 - lam)


# ---- drop path ---------------------------------------------------------------------------------------

class DropPathKeys:
    """What the keyed drop-path layers need to know about the current step: shared by all of them."""

    def __init__(self, seed: int, global_batch: int):
        self.seed, self.global_batch = seed, global_batch
        self.step = 0
        self.positions = np.arange(0)
        self.calls = 0
        self._hash = hashlib.blake2b(digest_size=8)

    def begin_step(self, step: int, positions) -> None:
        self.step, self.positions, self.calls = step, np.asarray(positions), 0
        self._hash = hashlib.blake2b(digest_size=8)

    def mask(self, keep_prob: float) -> np.ndarray:
        """Scaled keep mask for this rank's samples; the draw covers the whole global batch."""
        rng = keyed_rng(self.seed, PURPOSE_DROP_PATH, self.step, self.calls)
        self.calls += 1
        keep = rng.random(self.global_batch)[self.positions] < keep_prob
        mask = keep.astype(np.float32) / np.float32(keep_prob)
        self._hash.update(mask.tobytes())
        return mask

    def step_hash(self) -> str:
        """Hash of every mask drawn in this step, in call order."""
        return self._hash.hexdigest()


def install_keyed_drop_path(model, keys: DropPathKeys) -> int:
    """Replace timm's DropPath layers (which draw on the device) with keyed ones; returns how many."""
    import torch
    from timm.layers import DropPath

    class KeyedDropPath(torch.nn.Module):
        def __init__(self, drop_prob: float):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if self.drop_prob == 0.0 or not self.training:
                return x
            mask = torch.from_numpy(keys.mask(1.0 - self.drop_prob)).to(device=x.device, dtype=x.dtype)
            return x * mask.view((-1,) + (1,) * (x.ndim - 1))

        def extra_repr(self) -> str:
            return f"drop_prob={self.drop_prob}, keyed"

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DropPath):
                setattr(parent, name, KeyedDropPath(float(child.drop_prob)))
                count += 1
    return count
