"""compare stage: the candidate curve against the stored baseline, by every rule.

Prints the ModelZoo script's result lines, writes reports/<profile>/verdict.json (DVC metrics) and
adds the verdict and its numbers to the train stage's MLflow run. Always exits 0 once the verdict
is written: deciding what a failed verdict does is the gate's job. Inputs that cannot be judged (a
curve that is not the one its train.json names, a loss below 0, a baseline that contradicts itself)
are a one-line error, exit 2, and no verdict is written; the verdict names the SHA-256 of every file it
judged, so the gate refuses one left from earlier inputs (pipelines/verdict_file.py).

Outside the chain, compare two curves you already have (ModelZoo logs, dllogger JSON, curve CSV/JSON,
an MLflow run id); the ModelZoo lines printed are the ones ModelZoo's loss.py prints for them:

  python -m pipelines.stages.compare --candidate sdaa.log --baseline cuda.log --gate
      # -> reports/logs/: verdict.json, overlay.png, report.html, junit.xml; exit 0 pass, 1 fail, 3 inconclusive
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines import cli
from pipelines.baselines import Baseline, environment_differences, load_baseline, record_precision, refusals
from pipelines.curves import check_loss_sign
from pipelines.layout import CURVE, FINGERPRINTS, HTML, METRICS, RECORD, REPORTS_DIR, VERDICT, run_dir
from pipelines.localize import judge_fingerprints
from pipelines.logs import FORMATS, load_curve
from pipelines.params import load_params
from pipelines.provenance import file_id, file_sha256, read_run, write_record
from pipelines.report import write_report
from pipelines.review import flat_metrics, log_review, report_link, timing_rule, with_timing
from pipelines.tracking import RunLogger, tracking_uri, workspace_path
from pipelines.verdict import decide, envelope_sides
from pipelines.verdict_file import EXIT_BY_STATUS, input_entry, write_verdict

FOREIGN_OUT = REPORTS_DIR / "logs" / VERDICT


def _describe_device(baseline: Baseline | None) -> str:
    if baseline is None:
        return "unknown (a log without provenance)"
    return f"{baseline.provenance['device']} ({baseline.provenance['device_name']})"


def policy_for(cfg, own_runs: bool) -> dict:
    """Which rules decide: compare.gate/inform for a run of this chain against a stored baseline (identical
    inputs on both sides, so the numerics envelope applies); compare.foreign when either side is a log
    without a run record (its randomness and numerics are unknown, so only rules that hold without
    identical inputs decide, and the envelope cannot apply)."""
    if own_runs:
        return {"name": "chain", "gate": list(cfg.gate), "inform": list(cfg.inform),
                "why": "both sides carry their provenance (run record and stored baseline): compare.gate decides"}
    return {"name": "foreign", "gate": list(cfg.foreign.gate), "inform": list(cfg.foreign.inform),
            "why": "one side is a log without a run record, so the two sides may have drawn their own augmentation "
                   "randomness and the numerics envelope cannot apply: compare.foreign decides, with rules that hold "
                   "without identical inputs"}


def judge(cfg, candidate, baseline_curve, baseline_obj: Baseline | None, *, gate: list[str], inform: list[str],
          refusals: list[str] = (), notes: list[str] = (), envelope_exclude: str | None = None,
          samples_per_s: tuple | None = None, precision: str | None = None, stopped_early: dict | None = None,
          precision_check: dict | None = None, layers_check: dict | None = None):
    """`decide` with every rule's settings from the compare section and the baseline's band and envelope:
    the one place a candidate curve is judged (the power benchmark calls it too). `envelope_exclude`
    leaves one numerics variant out of the envelope (a held-out legitimate run). `precision` is the candidate's
    precision policy (pipelines/baselines.py record_precision): the envelope rule judges it against that policy's
    envelope, and cannot judge it (inconclusive, naming both policies) where the baseline has none.
    `stopped_early` is a fail-fast run's record of its stop (train.json): its truncated curve is judged as such.
    `precision_check` is the layer fingerprints' precision comparison the precision rule judges
    (pipelines/localize.py judge_fingerprints), `layers_check` their localization at one step the layers rule judges
    (the same)."""
    rules = cfg.rules
    stats = baseline_obj.stats() if baseline_obj is not None else None
    width, reference, missing = (envelope_sides(baseline_obj, precision, envelope_exclude) if baseline_obj is not None
                                 else (None, None, ""))
    return decide(candidate.steps, candidate.loss, baseline_curve.steps, baseline_curve.loss,
                  gate=list(gate), inform=list(inform), min_steps=cfg.min_steps,
                  envelope=rules.envelope.model_dump(), envelope_width=width, envelope_reference=reference,
                  envelope_missing=missing,
                  alignment=cfg.alignment, divergence=cfg.divergence.model_dump(),
                  modelzoo=rules.modelzoo.model_dump(), strict=rules.strict.model_dump(),
                  band=rules.band.model_dump(), trend=rules.trend.model_dump(),
                  band_stats=({"mean": stats["mean"], "std": stats["std"], "runs": len(baseline_obj.runs)}
                              if stats is not None else None),
                  throughput=rules.throughput.model_dump(), samples_per_s=samples_per_s,
                  refusals=list(refusals), notes=list(notes), stopped_early=stopped_early,
                  precision_check=precision_check, layers_check=layers_check)


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
    p.add_argument("--metric", help="value to read: a log's field (default: its train loss, e.g. train.loss, "
                                    "train_loss, Loss) or an MLflow run's metric (default: loss)")
    p.add_argument("--run", help="which run of a log holding several: first, last or its number (from 1)")
    p.add_argument("--gate", action="store_true", help="exit with the gate's status: 0 pass, 1 fail, 3 inconclusive")
    p.add_argument("--out", help=f"verdict file (default: reports/<profile>/{VERDICT}; {FOREIGN_OUT} when "
                                 f"--candidate or --baseline is given)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    foreign = bool(args.candidate or args.baseline)
    chain_dir = run_dir(params.profile)
    uri = tracking_uri(params.tracking) if params.tracking.enabled else None

    def imported(spec: str, fmt: str | None, side: str):
        got = load_curve(spec, fmt or args.format, rank=args.rank, regex=args.regex, tracking_uri=uri,
                         metric=args.metric, run=args.run)
        sources[side] = {**got.describe(), "rank": args.rank, "run": args.run, "regex": args.regex}
        lines = f" from lines {got.lines[0]}-{got.lines[1]}" if got.lines else ""
        read = f", {got.metric}" if got.metric else ""
        notes.append(f"{side}: {len(got.curve)} points{lines} of {got.source} ({got.format}{read})")
        return got

    cfg = params.compare
    notes: list[str] = []
    sources: dict[str, dict] = {}  # how each side was read: the report of a log verdict reads it the same way
    record = None
    inputs: dict[str, dict] = {}  # the exact files judged: the gate refuses the verdict once they change
    if args.candidate:
        got = imported(args.candidate, args.candidate_format, "candidate")
        candidate, candidate_source = got.curve, got.source
        notes += got.notes
        inputs["candidate"] = input_entry(args.candidate)
    else:  # the train stage's curve, checked against its record (steps done, SHA-256): a cut curve is refused
        candidate, record = read_run(chain_dir / CURVE, chain_dir / RECORD)
        candidate_source = str(chain_dir / CURVE)
        sources["candidate"] = {"source": candidate_source, "format": "csv", "points": len(candidate)}
        inputs["candidate"] = input_entry(chain_dir / CURVE, record["curve_sha256"])
        inputs["record"] = input_entry(chain_dir / RECORD)
    baseline_obj: Baseline | None
    if args.baseline:
        got = imported(args.baseline, args.baseline_format, "baseline")
        baseline_obj, baseline_curve, baseline_source = got.baseline, got.curve, got.source
        notes += got.notes
        inputs["baseline"] = input_entry(args.baseline)
    else:
        baseline_obj = load_baseline(cfg.baseline, allow_negative_loss=cfg.allow_negative_loss)
        baseline_curve, baseline_source = baseline_obj.curve, cfg.baseline
        sources["baseline"] = {"source": baseline_source, "format": "json", "points": len(baseline_curve)}
        inputs["baseline"] = input_entry(cfg.baseline)
    check_loss_sign(candidate, candidate_source, cfg.allow_negative_loss)
    check_loss_sign(baseline_curve, baseline_source, cfg.allow_negative_loss)

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
    stopped_early = record.get("stopped_early") if record is not None else None
    if stopped_early:  # fail fast (pipelines/failfast.py): judged as a truncated curve, never as a full one
        if not isinstance(stopped_early, dict) or stopped_early.get("stopped_step") != int(candidate.steps[-1]):
            refused.append(f"{chain_dir / RECORD}: stopped_early does not name the curve's last step "
                           f"{int(candidate.steps[-1])} (an edited record); rerun the train stage")
            stopped_early = None
        else:  # its seconds (run.json) differ in every run: not in verdict.json, a DVC output
            stopped_early = {k: v for k, v in stopped_early.items() if k not in ("seconds", "failed_after_s")}
    elif record is not None and record.get("stopped"):
        refused.append(f"training stopped early: {record['stopped']}")
    elif record is not None and isinstance(record.get("total_steps"), int) and \
            record["steps_done"] < record["total_steps"]:
        refused.append(f"{chain_dir / CURVE}: {record['steps_done']} of the run's {record['total_steps']} steps, but "
                       f"its record says the run was not stopped: a truncated curve is not judged as a full one")
    policy = policy_for(cfg, record is not None and baseline_obj is not None)
    notes.append(f"policy {policy['name']}: gate {', '.join(policy['gate'])}"
                 + (f"; inform {', '.join(policy['inform'])}" if policy["inform"] else "") + f" ({policy['why']})")
    # throughput is measured (run.json), different in every run: it decides only where compare.gate names it;
    # an informing throughput rule stays out of verdict.json (a DVC output) and is shown in the report and MLflow
    samples_per_s, inform = None, list(policy["inform"])
    if "throughput" in policy["gate"]:
        samples_per_s = ((record or {}).get("mean_samples_per_s"),
                         baseline_obj.provenance.get("mean_samples_per_s") if baseline_obj is not None else None)
    elif "throughput" in inform:
        inform.remove("throughput")
        notes.append("the throughput rule informs from the measured samples/s (run.json), which differ in every run: "
                     "it is judged in the report and in MLflow, not in this file")
    precision = record_precision(record) if record is not None else None
    if precision is not None and baseline_obj is not None:
        notes.append(f"precision policy: candidate {precision}, baseline {baseline_obj.precision or 'unknown'} "
                     f"(envelopes for {', '.join(baseline_obj.envelope_policies) or 'none'})")
    precision_check = layers_check = None
    judged = policy["gate"] + inform
    if ("precision" in judged or "layers" in judged) and record is not None and baseline_obj is not None:
        # from the layer fingerprints of both sides (files the verdict names): which format each tensor went
        # through, and how far one step's tensors are from the reference's
        precision_check, layers_check = judge_fingerprints(params, chain_dir, precision or "fp32", baseline_obj)
        for side, path in (("fingerprints", chain_dir / FINGERPRINTS),
                           ("baseline_fingerprints", Path(params.localize.baseline_fingerprints))):
            if path.is_file():
                inputs[side] = input_entry(path)
    verdict = judge(cfg, candidate, baseline_curve, baseline_obj, gate=policy["gate"], inform=inform,
                    refusals=refused, notes=notes, samples_per_s=samples_per_s, precision=precision,
                    stopped_early=stopped_early, precision_check=precision_check, layers_check=layers_check)
    for line in verdict.modelzoo_lines:
        print(line)
    out = Path(args.out) if args.out else (FOREIGN_OUT if foreign else chain_dir / VERDICT)
    # the tracking store is opened before verdict.json is written, so a corrupt store stops the stage
    # with nothing written rather than after it (what is written, is then complete)
    logger = RunLogger(params.tracking) if record is not None and not foreign else None
    result = write_verdict(out, verdict, profile=params.profile, candidate=candidate_source, baseline=baseline_source,
                           inputs=inputs, compare_params=cfg.model_dump(),
                           baseline_device=_describe_device(baseline_obj),
                           baseline_kind=baseline_obj.kind if baseline_obj is not None else "log",
                           baseline_seeds=baseline_obj.seeds if baseline_obj is not None else [], policy=policy,
                           **({"sources": sources} if foreign else {}))
    if not args.out and not foreign:
        write_record(chain_dir / METRICS, flat_metrics(result))
    shown = with_timing(result, timing_rule(result, record, baseline_obj, cfg.rules))  # + the informing throughput
    print(f"compare: verdict {verdict.status.upper()} over {verdict.compared_steps} steps of {candidate_source} "
          f"against {baseline_source} -> {out}")
    for reason in shown["reasons"]:
        print(f"  - {reason}")
    for note in shown["notes"] + ([record["run_info_note"]] if record and record.get("run_info_note") else []):
        print(f"  note: {note}")

    exit_status = EXIT_BY_STATUS[verdict.status] if args.gate else 0
    if logger is None:  # logs compared by hand: the chain's report beside the verdict; no train run to add to
        paths = write_report(out.parent, result, candidate, baseline_curve, baseline=baseline_obj, record=record,
                             rules=cfg.rules, verdict_sha256=file_sha256(out))
        print(f"report: {paths['html']}; figures {paths['overlay']}; JUnit {paths['junit']}")
        return exit_status
    logger.attach(record.get("mlflow_run_id", ""), record.get("mlflow_parent_run_id", ""))
    logger.set_tags({"verdict.reasons": json.dumps(shown["reasons"]), "baseline": cfg.baseline,
                     "baseline.id": file_id(cfg.baseline),
                     "baseline.source": baseline_obj.provenance.get("source", "") if baseline_obj else ""})
    log_review(logger, shown, profile=params.profile, device=record["environment"]["device"], candidate=candidate,
               reference=baseline_curve, baseline=baseline_obj, baseline_path=cfg.baseline,
               baseline_sha256=file_sha256(cfg.baseline), report=workspace_path(chain_dir / HTML),
               report_link=report_link(params.tracking, record))
    logger.log_artifact(out)
    logger.close()
    return exit_status


if __name__ == "__main__":
    sys.exit(cli.run(main))
