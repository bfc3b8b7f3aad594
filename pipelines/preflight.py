"""Preflight: one training step with layer fingerprints, localized against the baseline's, before the long run.

A port that computes something wrong at step 0 is named in seconds, not after a full run: the preflight trains
step 0 of the run params.yaml describes (the same batch, the same initial weights, the full run's lr schedule),
records its fingerprints and compares them with the baseline's step 0 (pipelines/localize.py `localize`, with
localize.k and localize.floor). One step is enough to cover the update phase too: step 0's fingerprints hold
the weights before it, the forward, the backward, the parameter gradients and the optimizer's update (weights
after minus before), so an optimizer bug (AdamW without bias correction, eps inside the root, weight decay on
norms) or a schedule bug that gives step 0 another lr (the schedule one step late) is named at step 0's update.
What only shows later (a divergence that accumulates over steps, a schedule wrong after warm-up) is fail fast's
and localize's replay's to find (pipelines/failfast.py, `localize replay --step S`).

The preflight informs, it never stops the long run: the verdict is the compare stage's, on the full run's files
(where the layers rule gates, as in the amp profile, it judges the same step-0 comparison from the train stage's
fingerprints, bitwise the preflight's). With compare.fail_fast on,
the long run stops as soon as the loss says so (the first step outside the envelope, a few steps in for every
zoo bug whose preflight names a module).

`run_preflight` is the one entry point (the preflight stage, the benchmarks): it returns the named entry, the
step, the phase and the seconds from its start to the answer (model build and data included).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.layout import FINGERPRINTS, PREPARED_DIR, RECORD, run_dir
from pipelines.params import Params

PREFLIGHT_STEP = 0  # the step the preflight trains and compares (the baseline's fingerprints always hold step 0)
PREFLIGHT = "preflight.json"  # reports/<profile>/preflight.json: what the preflight found (a DVC output)
PREFLIGHT_RUN = "preflight.run.json"  # its seconds: different in every run, so beside the output, not in it
PREFLIGHT_DIR = "preflight"  # reports/<profile>/preflight/: the one-step run (curve, record, fingerprints)


@dataclass
class PreflightResult:
    status: str  # "clean" | "diverged" | "unavailable" (no baseline fingerprints, or they cannot be compared)
    message: str  # one line: where the fingerprints part, or why nothing was compared
    step: int  # the step trained and compared
    phase: str = ""  # the named entry's phase (forward, backward, param_grad, update, weights), "" when none
    entry: str = ""  # the module output or parameter named first
    module: str = ""  # the module it belongs to
    kind: str = ""  # tolerance | missing | extra | shape | nonfinite
    seconds: float = 0.0  # from the call to the answer: model build, data, the step, the comparison
    localization: dict | None = None  # pipelines.localize.Localization.to_json() of the comparison

    def to_json(self, seconds: bool = True) -> dict:
        out = asdict(self)
        if not seconds:
            out.pop("seconds")
        return out


def fail_fast_key(params: Params) -> dict | None:
    """What the train stage's fail fast judges by, written into preflight.json (which the train stage depends on):
    null when compare.fail_fast is off, so a new baseline or other compare settings retrain nothing then; with it
    on, the settings and the baseline's SHA-256, so a run stopped early is reused only under the same ones."""
    from pipelines.provenance import file_sha256

    cfg = params.compare
    if not cfg.fail_fast.enabled:
        return None
    path = Path(cfg.baseline)
    return {"fail_fast": cfg.fail_fast.model_dump(), "gate": list(cfg.gate), "min_steps": cfg.min_steps,
            "envelope": cfg.rules.envelope.model_dump(), "allow_negative_loss": cfg.allow_negative_loss,
            "baseline": cfg.baseline, "baseline_sha256": file_sha256(path) if path.is_file() else None}


def preflight_params(params: Params) -> Params:
    """params for the preflight run: fingerprints at PREFLIGHT_STEP only, no MLflow run, no fail fast (nothing
    that changes the curve: the same step 0 as the long run's)."""
    train = params.train.model_copy(update={"fingerprints": params.train.fingerprints.model_copy(
        update={"steps": [PREFLIGHT_STEP]})})
    compare = params.compare.model_copy(update={"fail_fast": params.compare.fail_fast.model_copy(
        update={"enabled": False})})
    tracking = params.tracking.model_copy(update={"enabled": False})
    return params.model_copy(update={"train": train, "compare": compare, "tracking": tracking})


def run_preflight(params: Params, *, data_dir: Path = PREPARED_DIR, out_dir: Path | None = None,
                  quiet: bool = True) -> PreflightResult:
    """Train step 0 into out_dir (default reports/<profile>/preflight/) with fingerprints and localize them
    against localize.baseline_fingerprints. Fingerprints that cannot be compared (no baseline file, another
    baseline or params) give status "unavailable" saying why; a file that lies is an error (as in localize)."""
    from cait.fingerprints import FingerprintMismatch, load_reference
    from pipelines.localize import localize, read_run_fingerprints
    from pipelines.training import run_training

    start = time.perf_counter()
    folder = Path(out_dir) if out_dir is not None else run_dir(params.profile) / PREFLIGHT_DIR
    where = params.localize.baseline_fingerprints
    if not Path(where).exists():  # the reference alone: its tie to compare.baseline is the localize stage's check
        return PreflightResult("unavailable", f"{where}: the baseline has no layer fingerprints; record them with the "
                               f"baseline (make baseline)", PREFLIGHT_STEP, seconds=time.perf_counter() - start)
    reference = load_reference(where)
    run_training(preflight_params(params), folder, data_dir=data_dir, quiet=quiet, stop_after=PREFLIGHT_STEP)
    candidate = read_run_fingerprints(folder / FINGERPRINTS, folder / RECORD)
    try:
        found = localize(candidate, reference, k=params.localize.k, floor=params.localize.floor,
                         candidate_source=str(folder / FINGERPRINTS), baseline_source=where)
    except FingerprintMismatch as exc:
        return PreflightResult("unavailable", f"not compared: {exc}", PREFLIGHT_STEP,
                               seconds=time.perf_counter() - start)
    first = found.first
    return PreflightResult(found.status, found.message, PREFLIGHT_STEP,
                           phase=first.phase if first else "", entry=first.entry if first else "",
                           module=first.module if first else "", kind=first.kind if first else "",
                           seconds=time.perf_counter() - start, localization=found.to_json())
