"""compare stage: the candidate curve against the stored baseline, by every rule.

Prints the ModelZoo script's result lines, writes reports/<profile>/verdict.json (DVC metrics) and
adds the verdict and its numbers to the train stage's MLflow run. Always exits 0 once the verdict
is written: deciding what a failed verdict does is the gate's job.
"""

from __future__ import annotations

import json
import sys

from pipelines import cli
from pipelines.baselines import load_baseline, refusals
from pipelines.curves import read_curve_csv
from pipelines.layout import CURVE, RECORD, VERDICT, run_dir
from pipelines.params import load_params
from pipelines.provenance import file_id, read_record, write_record
from pipelines.tracking import RunLogger
from pipelines.verdict import decide


def main(argv=None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    out = run_dir(params.profile)
    record = read_record(out / RECORD)
    candidate = read_curve_csv(out / CURVE)
    baseline = load_baseline(params.compare.baseline)
    rules = params.compare.rules
    verdict = decide(candidate.steps, candidate.loss, baseline.steps, baseline.loss,
                     gate=list(params.compare.gate), min_steps=params.compare.min_steps,
                     modelzoo=rules.modelzoo.model_dump(), strict=rules.strict.model_dump(),
                     refusals=refusals(baseline, params.profile, record)
                     + ([f"training stopped early: {record['stopped']}"] if record.get("stopped") else []))
    for line in verdict.modelzoo_lines:
        print(line)
    result = {
        "status": verdict.status,
        "profile": params.profile,
        "baseline": params.compare.baseline,
        "baseline_device": f"{baseline.provenance['device']} ({baseline.provenance['device_name']})",
        "mlflow_run_id": record.get("mlflow_run_id", ""),
        **verdict.to_dict(),
    }
    write_record(out / VERDICT, result)
    print(f"compare: verdict {verdict.status.upper()} over {verdict.compared_steps} steps against "
          f"{params.compare.baseline}")
    for reason in verdict.reasons:
        print(f"  - {reason}")

    logger = RunLogger(params.tracking)
    logger.attach(record.get("mlflow_run_id", ""), record.get("mlflow_parent_run_id", ""))
    numbers = {f"compare.{name}.{k}": v for name, rule in verdict.rules.items() for k, v in rule.numbers.items()}
    logger.log_metrics({**numbers, "compare.compared_steps": verdict.compared_steps})
    logger.set_tags({"verdict": verdict.status, "verdict.reasons": json.dumps(verdict.reasons),
                     "baseline": params.compare.baseline, "baseline.id": file_id(params.compare.baseline),
                     "baseline.source": baseline.provenance.get("source", ""),
                     **{f"rule.{name}": "pass" if r.passed else "fail" for name, r in verdict.rules.items()},
                     **{f"rule.{name}.{k}": f"{v:.6g}" for name, r in verdict.rules.items() for k, v in r.numbers.items()}})
    # the parent run shows every profile/device of the execution at a glance
    logger.set_tags({f"verdict.{params.profile}.{record['environment']['device']}": verdict.status},
                    run_id=logger.parent_run_id)
    logger.log_artifact(out / VERDICT)
    logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
