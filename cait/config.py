"""Typed settings for data, model, training and device: the `cait` half of params.yaml.

pydantic validates them on load (unknown keys, wrong types, impossible values) so that a bad knob
is reported before any work starts; `pipelines.params` adds the harness's own sections.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cait.models import VARIANTS
from cait.synthetic import SyntheticSpec


# Ceilings on sizes: far above any real run, low enough that a typo (1e12) is refused, not attempted.
# The full DeiT/CaiT recipe, 400 epochs of ImageNet (1.28M images) at a global batch of 64, is 8M steps.
MAX_STEPS = 100_000_000
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536  # per process; CaiT-M48 at 448 px fits ~2 images per 80 GB card


class Section(BaseModel):
    """Strict: YAML gives native types, so `steps: true` or `steps: 1.0e12` is a mistake, not an int to coerce;
    floats must be finite (`lr: .inf` is refused, not trained with)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SyntheticConfig(Section):
    """How many synthetic images to write, and what they look like (see cait/synthetic.py)."""

    seed: int = 0
    train_per_class: int = Field(260, gt=0)
    val_per_class: int = Field(50, gt=0)
    jpeg_quality: int = Field(90, ge=1, le=100)
    pattern: SyntheticSpec = SyntheticSpec()


UNUSABLE_KINDS = ("truncated", "unreadable")  # cannot be trained on: always excluded


class ExpectedCounts(Section):
    """What a complete ImageNet holds; null skips a check (a deliberate subset, a test fixture)."""

    classes: Optional[int] = Field(1000, gt=0)
    train: Optional[int] = Field(1_281_167, gt=0)
    val: Optional[int] = Field(50_000, gt=0)


class ImageNetConfig(Section):
    """How to check an ImageNet folder (cait/imagenet.py). Relative file paths are under data.path."""

    # ground truth for a flat val/: Kaggle's LOC_val_solution.csv, or the devkit's
    # ILSVRC2012_validation_ground_truth.txt (then `synsets` maps its 1-based ids to WordNet ids)
    val_labels: Optional[str] = None
    synsets: Optional[str] = None  # devkit meta.mat, or a text file with one wnid per line in ILSVRC2012_ID order
    link: Literal["hard", "symbolic"] = "hard"  # how a flat val/ is reorganised into class folders (never copies)
    expected: ExpectedCounts = ExpectedCounts()
    decode_fraction: float = Field(1.0, ge=0.0, le=1.0)  # share of files fully decoded by the scan; the rest: header only
    exclude: list[Literal["cmyk", "png_as_jpeg", "grayscale", "truncated", "unreadable"]] = list(UNUSABLE_KINDS)

    @field_validator("exclude")
    @classmethod
    def _unusable_excluded(cls, kinds: list[str]) -> list[str]:
        missing = [k for k in UNUSABLE_KINDS if k not in kinds]
        if missing:
            raise ValueError(f"must include {', '.join(missing)} (such files cannot be trained on)")
        return kinds


class SubsetConfig(Section):
    """The pinned subset a short run trains on (cait/shards.py): chosen by seed, listed with content hashes."""

    enabled: bool = True
    seed: int = 0
    train_images: Optional[int] = Field(None, gt=0)  # null: train.steps x train.batch_size (one pass, no repeats)
    val_images: int = Field(1000, ge=0)  # capped at what val/ holds


class DataConfig(Section):
    source: Literal["synthetic", "imagenet"] = "synthetic"
    path: Optional[str] = None  # ImageNet root holding train/ and val/ (source: imagenet)
    workers: Optional[int] = Field(None, gt=0)  # processes for scanning, hashing and decoding; null: all CPU cores
    shards: bool = True  # train from pre-decoded uint8 shards of the manifest (no JPEG decoding during training)
    synthetic: SyntheticConfig = SyntheticConfig()
    imagenet: ImageNetConfig = ImageNetConfig()
    subset: SubsetConfig = SubsetConfig()

    @model_validator(mode="after")
    def _imagenet_needs_path(self):
        if self.source == "imagenet" and not self.path:
            raise ValueError("path: required when source is imagenet (the folder holding train/ and val/)")
        if self.source == "imagenet" and self.shards and not self.subset.enabled:
            raise ValueError("shards: needs subset.enabled for imagenet (all of ImageNet as shards is ~190 GB)")
        return self

    def curve_defining(self) -> dict:
        """The data knobs that shape the curve: not where the files live nor how many processes read them
        (the data manifest hash identifies the images themselves)."""
        out = self.model_dump(mode="json")
        for key in ("path", "workers"):
            out.pop(key)
        return out


class ModelConfig(Section):
    name: str = "cait_XXS24_224"
    img_size: Optional[int] = Field(None, gt=0)  # null: the variant's own
    patch_size: Optional[int] = Field(None, gt=0)  # null: 16
    num_classes: Optional[int] = Field(None, gt=1)  # null: as many as the data has
    drop_path: Optional[float] = Field(None, ge=0.0, lt=1.0)  # null: the variant's recipe value

    @field_validator("name")
    @classmethod
    def _known_variant(cls, name: str) -> str:
        if name not in VARIANTS:
            raise ValueError(f"unknown CaiT model {name!r}; valid names: {', '.join(VARIANTS)}")
        return name

    @property
    def resolved_img_size(self) -> int:
        """The training resolution: img_size, else the variant's own (224, 384 or 448)."""
        return self.img_size or VARIANTS[self.name].img_size

    @model_validator(mode="after")
    def _patches_fit(self):
        img = self.resolved_img_size
        patch = self.patch_size or VARIANTS[self.name].patch_size
        if img % patch:
            raise ValueError(f"img_size: {img} is not a multiple of patch_size {patch}")
        return self


class MixupConfig(Section):
    """Mixup/CutMix on whole batches (timm's `mode='batch'`); both alphas 0 turns it off."""

    mixup_alpha: float = Field(0.0, ge=0)  # DeiT: 0.8
    cutmix_alpha: float = Field(0.0, ge=0)  # DeiT: 1.0
    prob: float = Field(1.0, ge=0, le=1)  # chance that a batch is mixed at all
    switch_prob: float = Field(0.5, ge=0, le=1)  # with both on: chance of CutMix instead of Mixup

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class AugmentConfig(Section):
    """Per-image training augmentation (cait/augment.py); everything off means decode and resize only."""

    random_resized_crop: bool = False  # DeiT: true (scale 0.08-1, ratio 3/4-4/3, bicubic)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = Field(0.0, ge=0, le=1)  # DeiT: 0.5
    rand_augment: Optional[str] = None  # DeiT: rand-m9-mstd0.5-inc1 (timm's RandAugment config string)
    reprob: float = Field(0.0, ge=0, le=1)  # random erasing probability; DeiT: 0.25
    remode: Literal["pixel", "const"] = "pixel"  # erase with per-pixel normal noise (DeiT) or zeros

    @field_validator("rand_augment")
    @classmethod
    def _rand_augment_string(cls, value):
        if value is not None:
            from cait.augment import parse_rand_augment

            parse_rand_augment(value)  # raises ValueError naming the bad part
        return value

    @model_validator(mode="after")
    def _scale_order(self):
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale: needs 0 < low <= high <= 1 (got {list(self.crop_scale)})")
        return self

    @property
    def enabled(self) -> bool:
        return self.random_resized_crop or self.hflip > 0 or bool(self.rand_augment) or self.reprob > 0


# Keys of `train` that change how a run is executed but not its curve: left out of the params hash.
RUN_ONLY_TRAIN_KEYS = ("num_workers", "checkpoint_every", "fingerprints")


class FingerprintConfig(Section):
    """Layer fingerprints (cait/fingerprints.py): per-module statistics and sketches at these steps, the
    input of `localize`. Negative steps count from the end (-1: the last). Not part of the params hash:
    they observe the run, they do not change it."""

    steps: list[int] = [0, -1]
    sketch_dim: int = Field(64, ge=8, le=4096)  # CountSketch buckets: relative L2 error estimated to ~sqrt(2/dim)
    whole_tensors: bool = False  # also keep every tensor whole (small profiles only: ~4 x the activations)


class TrainConfig(Section):
    """The training recipe. The defaults are the short regression profile; recipes/cait_deit.yaml holds
    the full DeiT/CaiT recipe."""

    seed: int = Field(0, ge=0)
    steps: Optional[int] = Field(120, gt=0, le=MAX_STEPS)  # null: epochs x steps per epoch; set: stop after this many
    epochs: int = Field(1, gt=0, le=MAX_EPOCHS)  # the schedule's length when steps is null
    batch_size: int = Field(32, gt=0, le=MAX_BATCH_SIZE)  # per process; the global batch is batch_size x world size
    lr: float = Field(1e-3, gt=0)  # peak learning rate (base lr when lr_batch_scaling is on)
    lr_batch_scaling: bool = False  # DeiT: lr = lr x global_batch / 512
    min_lr: float = Field(1e-5, ge=0)
    warmup_lr: float = Field(0.0, ge=0)  # the warm-up starts here (DeiT: 1e-6)
    warmup_steps: Optional[int] = Field(12, ge=0)  # null: warmup_epochs x steps per epoch
    warmup_epochs: float = Field(0.0, ge=0)  # DeiT: 5
    weight_decay: float = Field(0.05, ge=0)  # not applied to norms, biases, pos_embed, cls_token, gammas
    opt_eps: float = Field(1e-8, gt=0)
    clip_grad: Optional[float] = Field(None, gt=0)  # max gradient norm; null: no clipping
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # DeiT: 0.1
    mixup: MixupConfig = MixupConfig()
    augment: AugmentConfig = AugmentConfig()
    repeated_aug: int = Field(1, ge=1)  # repeats of each image per epoch, only when distributed (DeiT: 3)
    ema: bool = False  # keep an exponential moving average of the weights (DeiT: on)
    ema_decay: float = Field(0.99996, gt=0, lt=1)
    amp: Optional[Literal["bf16", "fp16"]] = None  # mixed precision; null: fp32
    eval_every_epoch: bool = False  # top-1/top-5 on the val split after each epoch, best/last checkpoints
    eval_crop_ratio: float = Field(1.0, gt=0, le=1)  # CaiT's numbers use 1.0 (DeiT's default is 0.875)
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints; 0: only at epoch ends and on SIGTERM
    num_workers: int = Field(0, ge=0)  # loader processes; the curve does not depend on it
    stop_on_nonfinite: bool = True  # a NaN/inf loss ends the run; the verdict becomes inconclusive
    fingerprints: FingerprintConfig = FingerprintConfig()  # what localize compares (not part of the params hash)

    @property
    def images_per_run(self) -> int | None:
        """Images one process draws in a run of `steps` steps (steps x batch_size), the pinned subset's default
        size; None for an epochs-long run (steps null), which reads every training image."""
        return self.steps * self.batch_size if self.steps is not None else None

    def total_steps(self, steps_per_epoch: int) -> int:
        """Steps of the run: `steps` when set, else epochs x steps per epoch."""
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch

    @model_validator(mode="after")
    def _consistent(self):
        if self.steps is not None and self.warmup_steps is not None and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} must be smaller than steps ({self.steps})")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: {self.min_lr} must not exceed lr ({self.lr})")
        return self


class DeviceConfig(Section):
    type: Literal["cpu", "cuda", "sdaa"] = "cpu"
    index: int = Field(0, ge=0)  # with several processes each uses its LOCAL_RANK instead
    threads: Optional[int] = Field(None, gt=0)  # CPU threads for torch; null: torch's default
    deterministic: bool = True  # deterministic kernels, no TF32, no cudnn autotuning, no fused attention
    # TF32 matmuls (CUDA, SDAA): a precision policy of its own, judged only against a baseline's tf32 envelope;
    # null follows deterministic (off for regression runs, on for fast full training)
    tf32: Optional[bool] = None
    dist_backend: Optional[Literal["gloo", "nccl", "tccl"]] = None  # null: gloo on cpu, nccl on cuda, tccl on sdaa
    dist_timeout_s: int = Field(600, gt=0)  # a collective waiting longer than this fails the job
    # A legitimate numerics variant (the baseline command records them for the envelope) or a simulated
    # port bug (the power benchmark); cait/portbugs.py. null in every ordinary run.
    numerics_variant: Optional[str] = None
    port_bug: Optional[str] = None

    @field_validator("numerics_variant", "port_bug")
    @classmethod
    def _in_the_zoo(cls, name, info):
        from cait.portbugs import BUGS, PERTURBATION, VARIANTS, lookup

        if name is None:
            return name
        if info.field_name == "numerics_variant":
            if name not in VARIANTS:
                raise ValueError(f"unknown numerics variant {name!r}; valid: {', '.join(VARIANTS)}")
        elif lookup(name) is None:  # a malformed perturbation raises its own ValueError
            raise ValueError(f"unknown port bug {name!r}; valid: {', '.join(BUGS)}, or a perturbation "
                             f"{PERTURBATION}@<module path>@<eps>")
        return name
