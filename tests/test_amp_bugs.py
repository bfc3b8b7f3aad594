"""The mixed-precision zoo (cait/portbugs.py, issue 27): each port bug changes what it claims at step 0, and each
legitimate mixed-precision variant changes only rounding. One optimizer step of a tiny CaiT through the real
training loop (cait/train.py), with whole-tensor fingerprints at step 0; `localize` against the bug-free run
(zero spread, a floor of 0) must name the bug's injection site first (benchmarks/bench_localize.py `found`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cait.portbugs import BUGS, MP, VARIANTS, RunPatch

BF16_BUGS = [n for n, e in BUGS.items() if "bf16" in e.policies and "fp32" not in e.policies]
FP16_BUGS = [n for n, e in BUGS.items() if e.policies == ("fp16",)]
MP_VARIANTS = [n for n, e in VARIANTS.items() if e.policies == MP]


class _Batch:
    def __init__(self, step, images, targets):
        self.step, self.images, self.targets = step, images, targets
        self.positions = torch.arange(len(targets))
        self.sample_hashes = torch.arange(len(targets), dtype=torch.int64)
        self.hash = f"batch-{step}"


def _model():
    from timm.models.cait import Cait

    from cait.determinism import configure_numerics

    configure_numerics("cpu", True)  # as a run sets it before the model is built: fused attention off
    torch.manual_seed(0)
    return Cait(img_size=32, patch_size=16, embed_dim=96, depth=2, num_heads=4, depth_token_only=1, num_classes=4)


def one_step(amp: str, bug: str | None = None, variant: str | None = None, clip: float | None = None,
             init_scale: float | None = None, steps: int = 1):
    """(fingerprints at step 0, model after `steps` steps, the scaler) of a tiny CaiT under `amp`."""
    from cait.config import TrainConfig
    from cait.fingerprints import FingerprintRecorder
    from cait.train import train

    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * (1e4 if init_scale else 1)
    targets = torch.arange(8) % 4
    cfg = TrainConfig(steps=steps, batch_size=8, warmup_steps=0, amp=amp, clip_grad=clip)
    recorder = FingerprintRecorder([0], sketch_dim=16, whole_tensors=True)
    model = _model()
    seen = {}
    if init_scale:  # the scaler the loop builds, with an initial scale that overflows fp16 at step 0
        import cait.train as loop

        real = loop.grad_scaler

        def scaler(device, amp_):
            seen["scaler"] = torch.amp.GradScaler("cpu", init_scale=init_scale)
            return seen["scaler"]
        loop.grad_scaler = scaler
    try:
        train(model, lambda start: (_Batch(s, images, targets) for s in range(start, steps)), torch.device("cpu"),
              cfg, steps_per_epoch=steps, patch=RunPatch(variant, bug), fingerprints=recorder)
    finally:
        if init_scale:
            loop.grad_scaler = real
    meta = {"model": "tiny", "profile": "t", "params_hash": "h", "world_size": 1, "precision": amp}
    return recorder.fingerprints(meta), model, seen.get("scaler")


def first_divergence(candidate, reference):
    """The first tensor that differs at all: k 1, floor 0, and no format resolution (the reference's precision
    shares left out: localize would let a bf16 tensor move by one bf16 ulp)."""
    from dataclasses import replace

    from cait.fingerprints import Fingerprints
    from pipelines.localize import localize, with_spread

    bare = Fingerprints(reference.meta, {step: {phase: replace(pp, precision=None) for phase, pp in phases.items()}
                                         for step, phases in reference.steps.items()})
    return localize(candidate, with_spread(bare, {}), k=1.0, floor=0.0).first


@pytest.fixture(scope="module")
def reference_bf16():
    return one_step("bf16")[0]


@pytest.mark.parametrize("name", BF16_BUGS)
def test_each_mixed_precision_bug_changes_its_site_first_at_step_0(name, reference_bf16):
    from benchmarks.bench_localize import found

    prints, _, _ = one_step("bf16", bug=name)
    first = first_divergence(prints, reference_bf16)
    assert first is not None, f"{name}: nothing changed at step 0"
    named = {"phase": first.phase, "module": first.module}
    assert found(BUGS[name].site, named), f"{name}: first change at {first.phase} {first.module} {first.entry}, " \
                                          f"claimed {BUGS[name].site}"


def _on_bf16(array) -> bool:
    return np.array_equal(array, torch.from_numpy(np.asarray(array, np.float32)).to(torch.bfloat16).float().numpy())


def test_the_bugs_change_what_they_say(reference_bf16):
    """Weights and gradients on the bf16 grid where the bugs put them, and only there."""
    _, model, _ = one_step("bf16", bug="master_weights_bf16")
    assert all(_on_bf16(p.detach().numpy()) for p in model.parameters())  # no fp32 master copy after the update
    _, clean, _ = one_step("bf16")
    assert not all(_on_bf16(p.detach().numpy()) for p in clean.parameters())

    def grads(prints):
        g = prints.steps[0]["param_grad"]
        return dict(zip(g.names, g.whole))
    rounded, ref = grads(one_step("bf16", bug="grads_bf16")[0]), grads(reference_bf16)
    assert all(_on_bf16(g) for g in rounded.values())
    assert not all(_on_bf16(g) for g in ref.values())  # the LayerNorm, LayerScale and embedding gradients are fp32
    assert all(np.array_equal(torch.from_numpy(ref[n]).to(torch.bfloat16).float().numpy(), g)
               for n, g in rounded.items())  # exactly the reference's gradients, rounded


@pytest.mark.parametrize("name", MP_VARIANTS)
def test_a_mixed_precision_variant_changes_rounding_only(name, reference_bf16):
    """Each legitimate variant changes step 0 (else it would measure nothing), and by bf16 rounding only: where it
    first differs the tensor is within a few bf16 ulps (2^-8 relative) of the reference's. (softmax_fp32 changes
    no forward value here: the fp32 softmax is rounded to bf16 by the next matmul; its backward differs.)"""
    prints, _, _ = one_step("bf16", variant=name)
    first = first_divergence(prints, reference_bf16)
    assert first is not None, f"{name}: changes nothing at step 0"
    assert first.rel_l2 < 2 ** -5, (name, first)


def test_fp16_scaler_bugs_change_the_step_at_step_0():
    """Under fp16 with a loss scaler (CUDA/SDAA's policy; the CPU profile is bf16, which needs none), each scaler
    slip changes the update or the scale at step 0."""
    _, ref_model, _ = one_step("fp16")
    ref = torch.cat([p.detach().flatten() for p in ref_model.parameters()])

    def weights(model):
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    _, model, scaler = one_step("fp16", bug="scaler_not_unscaled")
    assert not torch.equal(weights(model), ref) and scaler is None  # the scaled gradients were applied
    _, clipped, _ = one_step("fp16", clip=1.0)
    _, model, _ = one_step("fp16", bug="scaler_unscale_after_clip", clip=1.0)
    assert not torch.equal(weights(model), weights(clipped))  # clipped while scaled: a 65536x smaller step
    # an initial scale that overflows fp16 at step 0: the scaler skips the step and halves the scale
    _, skipped, good = one_step("fp16", init_scale=2.0 ** 60)
    assert good.get_scale() == 2.0 ** 59 and torch.equal(weights(skipped), weights(_model()))
    _, _, frozen = one_step("fp16", bug="scaler_never_updated", init_scale=2.0 ** 60)
    assert frozen.get_scale() == 2.0 ** 60  # never backed off: every later step overflows and is skipped
    _, stepped, _ = one_step("fp16", bug="scaler_step_on_nonfinite", init_scale=2.0 ** 60)
    assert not torch.isfinite(weights(stepped)).all()  # the overflowed step was taken


def test_the_zoo_knows_each_entrys_policies():
    from cait.portbugs import envelope_variants

    assert len(BF16_BUGS) >= 6 and len(FP16_BUGS) >= 4
    assert set(MP_VARIANTS) <= set(VARIANTS) and not set(MP_VARIANTS) & set(envelope_variants("cpu", "fp32"))
    assert set(MP_VARIANTS) <= set(envelope_variants("cpu", "bf16"))
    assert all(BUGS[n].site for n in BF16_BUGS + FP16_BUGS)


def test_softmax_in_bf16_is_no_bug_under_cpu_bf16_autocast(reference_bf16):
    """CPU autocast already computes the attention softmax in bf16 (CUDA's in fp32: the softmax_fp32 variant), so
    the fp32 zoo's softmax_bf16 changes nothing here, bit for bit; LayerNorm in bf16 still is a bug (its input,
    the residual stream, is fp32 under autocast)."""
    from pipelines.localize import localize, with_spread

    prints, _, _ = one_step("bf16", bug="softmax_bf16")
    assert localize(prints, with_spread(reference_bf16, {}), k=1.0, floor=0.0).status == "clean"
    assert first_divergence(one_step("bf16", bug="layernorm_bf16")[0], reference_bf16).module == "blocks.0.norm1"
