"""compare stage: the candidate curve against the stored baseline, by every rule.

Prints the ModelZoo script's result lines, writes reports/<profile>/verdict.json (DVC metrics) and
adds the verdict and its numbers to the train stage's MLflow run. Always exits 0 once the verdict
is written: deciding what a failed verdict does is the gate's job.

Outside the chain, compare two curves you already have (ModelZoo logs, dllogger JSON, curve CSV/JSON,
an MLflow run id); the ModelZoo lines printed are the ones ModelZoo's loss.py prints for them:

  python -m pipelines.stages.compare --candidate sdaa.log --baseline cuda.log   # -> reports/logs/verdict.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines import cli
from pipelines.baselines import Baseline, environment_differences, load_baseline, refusals
from pipelines.curves import read_curve_csv
from pipelines.layout import CURVE, RECORD, REPORTS_DIR, VERDICT, run_dir
from pipelines.logs import FORMATS, load_curve
from pipelines.params import load_params
from pipelines.provenance import file_id, read_record, write_record
from pipelines.tracking import RunLogger, tracking_uri
from pipelines.verdict import decide

FOREIGN_OUT = REPORTS_DIR / "logs" / VERDICT


def _describe_device(baseline: Baseline | None) -> str:
    if baseline is None:
        return "unknown (a log without provenance)"
    return f"{baseline.provenance['device']} ({baseline.provenance['device_name']})"


def gate_for(cfg, own_runs: bool) -> tuple[list[str], list[str], str]:
    """(gate, inform, note): compare.gate/inform for a run of this chain against a stored baseline; for a
    foreign log (no run record on one side: its randomness and numerics are unknown) the envelope, measured
    for identical inputs, cannot apply, and compare.foreign_gate decides instead."""
    if own_runs:
        return list(cfg.gate), list(cfg.inform), ""
    gate = list(cfg.foreign_gate)
    inform = [r for r in [*cfg.gate, *cfg.inform] if r not in gate and r != "envelope"]
    return gate, inform, (f"a foreign log is compared (no run record with identical inputs), so the envelope rule "
                          f"cannot apply; the verdict is decided by compare.foreign_gate: {', '.join(gate)}")


def judge(cfg, candidate, baseline_curve, baseline_obj: Baseline | None, *, gate: list[str], inform: list[str],
          refusals: list[str] = (), notes: list[str] = (), envelope_exclude: str | None = None):
    """`decide` with every rule's settings from the compare section and the baseline's band and envelope:
    the one place a candidate curve is judged (the power benchmark calls it too). `envelope_exclude`
    leaves one numerics variant out of the envelope (a held-out legitimate run)."""
    rules = cfg.rules
    stats = baseline_obj.stats() if baseline_obj is not None else None
    width = baseline_obj.envelope(exclude=envelope_exclude) if baseline_obj is not None else None
    return decide(candidate.steps, candidate.loss, baseline_curve.steps, baseline_curve.loss,
                  gate=list(gate), inform=list(inform), min_steps=cfg.min_steps,
                  envelope=rules.envelope.model_dump(), envelope_width=width,
                  envelope_missing=baseline_obj.envelope_missing() if baseline_obj is not None else "",
                  alignment=cfg.alignment, divergence=cfg.divergence.model_dump(),
                  modelzoo=rules.modelzoo.model_dump(), strict=rules.strict.model_dump(),
                  band=rules.band.model_dump(), trend=rules.trend.model_dump(),
                  band_stats=({"mean": stats["mean"], "std": stats["std"], "runs": len(baseline_obj.runs)}
                              if stats is not None else None),
                  refusals=list(refusals), notes=list(notes))


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--candidate", help="log, curve CSV/JSON or MLflow run id to judge "
                                       "(default: reports/<profile>/curve.csv from the train stage)")
    p.add_argument("--baseline", help="baseline JSON, log, curve CSV/JSON or MLflow run id to judge against "
                                      "(default: compare.baseline)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="format of both inputs (default: detect)")
    p.add_argument("--candidate-format", choices=FORMATS, help="format of --candidate (overrides --format)")
    p.add_argument("--baseline-format", choices=FORMATS, help="format of --baseline (overrides --format)")
    p.add_argument("--rank", type=int, default=0, help="rank to read from multi-rank dllogger logs (default 0)")
    p.add_argument("--regex", help="pattern with a (?P<loss>...) group, and optionally (?P<step>...), for other logs")
    p.add_argument("--metric", default="loss", help="metric to read from an MLflow run (default: loss)")
    p.add_argument("--out", help=f"verdict file (default: reports/<profile>/{VERDICT}; {FOREIGN_OUT} when "
                                 f"--candidate or --baseline is given)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    foreign = bool(args.candidate or args.baseline)
    chain_dir = run_dir(params.profile)
    uri = tracking_uri(params.tracking) if params.tracking.enabled else None

    def imported(spec: str, fmt: str | None):
        return load_curve(spec, fmt or args.format, rank=args.rank, regex=args.regex, tracking_uri=uri,
                          metric=args.metric)

    notes: list[str] = []
    record = None
    if args.candidate:
        got = imported(args.candidate, args.candidate_format)
        candidate, candidate_source = got.curve, got.source
        notes += got.notes
    else:
        record = read_record(chain_dir / RECORD)
        candidate, candidate_source = read_curve_csv(chain_dir / CURVE), str(chain_dir / CURVE)
    baseline_obj: Baseline | None
    if args.baseline:
        got = imported(args.baseline, args.baseline_format)
        baseline_obj, baseline_curve, baseline_source = got.baseline, got.curve, got.source
        notes += got.notes
    else:
        baseline_obj = load_baseline(params.compare.baseline)
        baseline_curve, baseline_source = baseline_obj.curve, params.compare.baseline

    refused: list[str] = []
    if baseline_obj is not None:
        seed = record["curve_params"]["train"]["seed"] if record else None
        baseline_curve, paired = baseline_obj.reference_for(seed)
        notes += [paired] if paired else []
    if record is not None and baseline_obj is not None:
        refused = refusals(baseline_obj, params.profile, record)
        notes += environment_differences(baseline_obj, record)
    else:
        notes.append("provenance not checked: " + ("the candidate" if record is None else "the baseline")
                     + " is a log without a run record; the verdict judges the curves only")
    for key, what in (("port_bug", "the simulated port bug"), ("numerics_variant", "the numerics variant")):
        if record is not None and record.get(key):
            notes.append(f"the candidate was trained with {what} {record[key]!r} (cait/portbugs.py)")
    if record is not None and record.get("stopped"):
        refused.append(f"training stopped early: {record['stopped']}")
    gate, inform, why = gate_for(params.compare, record is not None and baseline_obj is not None)
    notes += [why] if why else []
    verdict = judge(params.compare, candidate, baseline_curve, baseline_obj, gate=gate, inform=inform,
                    refusals=refused, notes=notes)
    for line in verdict.modelzoo_lines:
        print(line)
    out = Path(args.out) if args.out else (FOREIGN_OUT if foreign else chain_dir / VERDICT)
    result = {
        "status": verdict.status,
        "profile": params.profile,
        "baseline": baseline_source,
        "baseline_device": _describe_device(baseline_obj),
        "baseline_kind": baseline_obj.kind if baseline_obj is not None else "log",
        "baseline_seeds": baseline_obj.seeds if baseline_obj is not None else [],
        "candidate": candidate_source,
        "mlflow_run_id": (record or {}).get("mlflow_run_id", ""),
        **verdict.to_dict(),
    }
    write_record(out, result)
    print(f"compare: verdict {verdict.status.upper()} over {verdict.compared_steps} steps of {candidate_source} "
          f"against {baseline_source} -> {out}")
    for reason in verdict.reasons:
        print(f"  - {reason}")
    for note in verdict.notes:
        print(f"  note: {note}")

    if record is None or foreign:
        return 0  # a comparison of foreign logs has no train run to add to
    logger = RunLogger(params.tracking)
    logger.attach(record.get("mlflow_run_id", ""), record.get("mlflow_parent_run_id", ""))
    numbers = {f"compare.{name}.{k}": v for name, rule in verdict.rules.items() for k, v in rule.numbers.items()}
    if verdict.first_divergence_step is not None:
        numbers["compare.first_divergence_step"] = verdict.first_divergence_step
    logger.log_metrics({**numbers, "compare.compared_steps": verdict.compared_steps})
    logger.set_tags({"verdict": verdict.status, "verdict.reasons": json.dumps(verdict.reasons),
                     "baseline": params.compare.baseline, "baseline.id": file_id(params.compare.baseline),
                     "baseline.source": baseline_obj.provenance.get("source", "") if baseline_obj else "",
                     **{f"rule.{name}": "pass" if r.passed else "fail" for name, r in verdict.rules.items()},
                     **{f"rule.{name}.{k}": f"{v:.6g}" if isinstance(v, float) else str(v)
                        for name, r in verdict.rules.items() for k, v in r.numbers.items()}})
    # the parent run shows every profile/device of the execution at a glance
    logger.set_tags({f"verdict.{params.profile}.{record['environment']['device']}": verdict.status},
                    run_id=logger.parent_run_id)
    logger.log_artifact(out)
    logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
