"""Decoding and normalising pixels: the one arithmetic for JPEG files, shards and augmented views."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cait.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def open_rgb(path: Path):
    """Decode an image file to an RGB PIL image; an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); remove or replace the file and rerun prepare") from None


def decode_rgb(path: Path, size: int) -> np.ndarray:
    """Decode to RGB uint8 HWC, resized (bicubic) to `size` x `size` if needed: the pixels a shard stores."""
    from PIL import Image

    img = open_rgb(path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def normalise(pixels) -> np.ndarray:
    """uint8 HWC RGB (array or PIL image) -> float32 CHW normalised with ImageNet statistics: the same
    arithmetic for JPEGs, shards and augmented views."""
    array = np.asarray(pixels, dtype=np.float32) / 255.0
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def decode_eval_image(path: Path, size: int, crop_ratio: float) -> np.ndarray:
    """Evaluation view as timm builds it: shorter side to size/crop_ratio (bicubic), centre crop `size`."""
    from PIL import Image

    img = open_rgb(path)
    if crop_ratio == 1.0 and img.size == (size, size):
        return normalise(img)
    scale = int(math.floor(size / crop_ratio))
    w, h = img.size
    new_w, new_h = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
    return normalise(img.crop((left, top, left + size, top + size)))
