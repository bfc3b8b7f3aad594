"""summary command: one table of a night's verdicts across devices and profiles.

  python -m pipelines.stages.summary                      # every reports/<profile>/ of this checkout
  python -m pipelines.stages.summary nightly-artifacts/   # folders the CI jobs uploaded (searched recursively)
  python -m pipelines.stages.summary --format markdown >> "$GITHUB_STEP_SUMMARY"
  python -m pipelines.stages.summary nightly-artifacts/ --execution "$CAIT_EXECUTION_ID"   # and agrees with MLflow?

Reads only verdict.json (through pipelines/verdict_file.py, the one reader), train.json and run.json (the
measured samples/s; "-" without it) (no torch, so a CI job without it can run it). The inputs a verdict names are not rechecked here: the uploaded
folders hold no baseline; each job's own gate did that.
Exit status: the night's worst: 1 if any run failed, else 3 if any was inconclusive, else 0; 2 when a
folder holds no verdict or a malformed one (a job that died before comparing is not a pass).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cait.errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS, ConfigError, TrackingError, VerdictError
from pipelines import cli
from pipelines.layout import HTML, RECORD, REPORTS_DIR, RUN_INFO, VERDICT
from pipelines.provenance import read_run_info
from pipelines.verdict_file import read_verdict

COLUMNS = ("profile", "device", "device name", "verdict", "steps", "MRE (signed)", "MAE (signed)",
           "mean |d|/|b|", "first divergence", "samples/s", "report")


def _num(value, fmt: str = ".4g") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def find_verdicts(paths: list[Path]) -> list[Path]:
    """verdict.json files under the given folders (or given directly), in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(path.rglob(VERDICT))
        else:
            raise ConfigError(f"{path}: no such file or folder; give the folders the nightly jobs uploaded")
    return found


def _json_beside(verdict_path: Path, name: str) -> dict:
    try:
        data = json.loads((verdict_path.parent / name).read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def summary_row(verdict_path: Path) -> dict:
    """One night's run as table cells; a missing train.json only blanks the device columns, a missing run.json
    the samples/s (train.json of an older harness held them)."""
    verdict = read_verdict(verdict_path).data
    status = verdict["status"]
    record = _json_beside(verdict_path, RECORD)
    env = record.get("environment", {})
    info, _ = read_run_info(verdict_path.parent / RUN_INFO, record.get("curve_sha256"))  # only the same curve's
    ips = info.get("mean_samples_per_s", record.get("mean_samples_per_s"))
    rules = verdict.get("rules", {})
    modelzoo = rules.get("modelzoo", {}).get("numbers", {})
    strict = rules.get("strict", {}).get("numbers", {})
    first = verdict.get("first_divergence_step")
    report = verdict_path.parent / HTML
    return {"profile": verdict.get("profile", "?"), "device": env.get("device", "?"),
            "device name": env.get("device_name", "?"), "verdict": status,
            "steps": str(verdict.get("compared_steps", "-")),
            "MRE (signed)": _num(modelzoo.get("mean_relative_error")),
            "MAE (signed)": _num(modelzoo.get("mean_absolute_error")),
            "mean |d|/|b|": _num(strict.get("mean_abs_relative_error")),
            "first divergence": "-" if first is None else str(first),
            "samples/s": _num(ips, ".1f"),
            "report": str(report) if report.is_file() else "- (none written)"}


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1)
    cells = [[row[c] for c in COLUMNS] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in cells:
            row[3] = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "⚠️ inconclusive"}.get(row[3], row[3])
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def night_status(statuses: list[str]) -> int:
    if "fail" in statuses:
        return EXIT_FAIL
    if any(s != "pass" for s in statuses):
        return EXIT_INCONCLUSIVE
    return EXIT_PASS


def mlflow_disagreements(verdicts: list[Path], uri: str, execution: str, experiment: str) -> list[str]:
    """Where the night's MLflow record (the parent run of `execution` and its device runs) says otherwise than
    these verdict.json files: a device missing on either side, another verdict, another night verdict."""
    from mlflow.tracking import MlflowClient

    from pipelines.review import SEVERITY

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    parents = list(client.search_runs([exp.experiment_id], max_results=2, filter_string=(
        f"tags.`cait.execution` = '{execution}' and tags.`cait.role` = 'parent'"))) if exp else []
    if len(parents) != 1:
        return [f"execution {execution}: {len(parents)} parent runs in {experiment} at {uri}, not one"]
    tags = parents[0].data.tags
    shown = {key[len("verdict."):]: value for key, value in tags.items()
             if key.startswith("verdict.") and key.count(".") >= 2 and value in SEVERITY}
    rows = {f"{row['profile']}.{row['device']}": row["verdict"] for row in map(summary_row, verdicts)}
    out = [f"{slot}: {rows.get(slot, 'no verdict.json')} in the summary, {shown.get(slot, 'absent')} in MLflow"
           for slot in sorted(set(rows) | set(shown)) if rows.get(slot) != shown.get(slot)]
    night = {EXIT_FAIL: "fail", EXIT_INCONCLUSIVE: "inconclusive", EXIT_PASS: "pass"}[night_status(list(rows.values()))]
    if tags.get("verdict") != night:
        out.append(f"night: {night} in the summary, {tags.get('verdict')} on the parent run in MLflow")
    return out


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", type=Path, help=f"folders or verdict.json files (default: {REPORTS_DIR}/)")
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    p.add_argument("--execution", help="also check the table against MLflow: the parent run of this execution id "
                                       "($CAIT_EXECUTION_ID of the night) and its device runs; a difference exits 4")
    args = p.parse_args(argv)
    paths = args.paths or [REPORTS_DIR]
    verdicts = find_verdicts(paths)
    if not verdicts:
        raise VerdictError(f"no {VERDICT} under {', '.join(map(str, paths))}; run the chain "
                            f"(dvc repro report) or download the nightly jobs' artifacts first")
    rows = [summary_row(v) for v in verdicts]
    rows.sort(key=lambda r: (r["profile"], r["device"], r["report"]))
    print(render(rows, args.format))
    statuses = [r["verdict"] for r in rows]
    if args.format == "text" and not args.quiet:
        counts = {s: statuses.count(s) for s in ("pass", "fail", "inconclusive") if s in statuses}
        print("\nnight: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    if args.execution:
        from pipelines.params import load_params
        from pipelines.tracking import tracking_uri

        cfg = load_params(args.params).tracking
        differ = mlflow_disagreements(verdicts, tracking_uri(cfg), args.execution, cfg.experiment)
        if differ:
            raise TrackingError(f"the summary and MLflow ({tracking_uri(cfg)}) disagree on execution "
                                f"{args.execution}: " + "; ".join(differ))
    return night_status(statuses)


if __name__ == "__main__":
    sys.exit(cli.run(main))
