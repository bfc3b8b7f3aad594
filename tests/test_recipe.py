"""The DeiT/CaiT recipe's pieces: lr scaling and schedule, AdamW groups, per-variant drop path, the full
recipe file, mixed precision and EMA through the real loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from cait.config import TrainConfig
from cait.distributed import first_slurm_host, process_env
from cait.models import VARIANTS, build_model
from cait.train import lr_at, param_groups, peak_lr, schedule_length
from pipelines.params import parse_params

REPO = Path(__file__).resolve().parents[1]


def test_lr_scales_with_the_global_batch_and_follows_warmup_then_cosine():
    cfg = TrainConfig(steps=None, epochs=10, lr=5e-4, lr_batch_scaling=True, warmup_lr=1e-6, warmup_steps=None,
                      warmup_epochs=2, min_lr=1e-5)
    assert peak_lr(cfg, 64 * 16) == pytest.approx(1e-3)  # DeiT: 5e-4 x 1024 / 512
    total, warmup = schedule_length(cfg, steps_per_epoch=100)
    assert (total, warmup) == (1000, 200)
    peak = peak_lr(cfg, 1024)
    lrs = [lr_at(s, cfg, total, warmup, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(1e-6 + (peak - 1e-6) / 200)
    assert lrs[199] == pytest.approx(peak) and max(lrs) == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[200:], lrs[201:]))  # cosine: never rises after the warm-up
    assert lrs[200 + 400] == pytest.approx(1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 400 / 799)))


def test_no_weight_decay_on_norms_biases_tokens_and_layerscale():
    model = build_model("cait_XXS24_224", img_size=32, num_classes=4)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "blocks.0.gamma_1", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias",
            "blocks_token_only.1.gamma_2"} <= skipped
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("name,rate", [("cait_XXS24_224", 0.05), ("cait_S24_224", 0.1), ("cait_S36", 0.2),
                                       ("cait_M36", 0.3), ("cait_M48", 0.4)])
def test_drop_path_defaults_to_the_paper_value(name, rate):
    assert VARIANTS[name].drop_path == rate


def test_full_recipe_file_is_valid_and_is_deit():
    raw = yaml.safe_load((REPO / "recipes/cait_deit.yaml").read_text())
    params = parse_params(raw, "recipes/cait_deit.yaml")
    t = params.train
    assert (t.batch_size, t.lr, t.lr_batch_scaling, t.label_smoothing, t.repeated_aug) == (64, 5e-4, True, 0.1, 3)
    assert (t.mixup.mixup_alpha, t.mixup.cutmix_alpha, t.augment.rand_augment, t.augment.reprob) == (
        0.8, 1.0, "rand-m9-mstd0.5-inc1", 0.25)
    assert t.ema and t.eval_every_epoch and t.eval_crop_ratio == 1.0 and params.model.drop_path is None


def test_default_profile_keeps_augmentation_off():
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert not params.train.augment.enabled and not params.train.mixup.enabled
    assert params.device.deterministic


@pytest.mark.parametrize("amp", ["bf16", None])
def test_amp_and_ema_train_through_the_real_loop(amp, tmp_path):
    from cait.checkpoint import LAST, load_checkpoint
    from cait.data import Batch
    from cait.train import CheckpointPlan, train

    cfg = TrainConfig(steps=2, warmup_steps=1, batch_size=4, amp=amp, ema=True, ema_decay=0.5, checkpoint_every=2)
    torch.manual_seed(0)
    model = build_model("cait_XXS24_224", img_size=32, num_classes=4, drop_path=0.1)
    generator = torch.Generator().manual_seed(0)
    data = [Batch(torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3]), step,
                  torch.arange(4), torch.arange(4) + step) for step in range(2)]
    summary = train(model, lambda start: data[start:], torch.device("cpu"), cfg, steps_per_epoch=2,
                    checkpoints=CheckpointPlan(tmp_path, "hash"))
    assert all(math.isfinite(r["loss"]) for r in summary.rows) and summary.steps_done == 2
    state = load_checkpoint(tmp_path / LAST, "hash")
    assert state["ema"] is not None and state["step"] == 2
    ema_weight, weight = state["ema"]["head.weight"], state["model"]["head.weight"]
    assert not torch.equal(ema_weight, weight)  # the average lags the weights


def test_slurm_variables_give_rank_world_and_master():
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-06],x1"}
    assert process_env(env) == (5, 8, 1)
    assert env["MASTER_ADDR"] == "gpu03" and env["MASTER_PORT"] == "29500"
    assert process_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_NTASKS": "8"}) == (1, 2, 1)
    assert process_env({}) == (0, 1, 0)
    assert first_slurm_host("node7") == "node7" and first_slurm_host("a[1,4]") == "a1"


def test_cait_run_takes_q_like_every_command_and_names_its_own_flags(tmp_path):
    """README: every command takes -q. cait.run's usage names the command as it is typed, and a missing data folder
    is named as the flag it came from (not params.yaml's data.path, which cait.run has none of)."""
    from cait import run
    from cait.errors import DataError

    parser = run.build_parser()
    assert parser.prog == "python -m cait.run" and parser.format_usage().startswith("usage: python -m cait.run ")
    assert parser.parse_args(["-q", "--model", "cait_XXS24_224", "--data-path", "d"]).quiet
    assert not parser.parse_args(["--model", "cait_XXS24_224", "--data-path", "d"]).quiet
    with pytest.raises(DataError, match=r"^--data-path \S*nowhere: not a folder; pass a prepared folder"):
        run.data_folder(str(tmp_path / "nowhere"), tmp_path)
