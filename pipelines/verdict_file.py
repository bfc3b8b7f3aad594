"""verdict.json: the one writer and the one reader of the compare stage's verdict, a versioned schema
(like pipelines/baselines.py). The gate, the report stage and the summary read it only through
`read_verdict`, which checks the version and every field they use.

A verdict names the exact files it judged (`inputs`: path and SHA-256 of the candidate curve, the run
record and the baseline) and the hash of the compare params that decided it. `stale_reasons` compares
them with the files on disk now: after a killed train stage DVC has removed the curve and the record,
but the old verdict.json and report.html stay behind, and such a verdict must never pass for a curve
it did not see. The report stage writes the verdict's own SHA-256 into report.html (`report_mark`),
so a report left from an older verdict is recognised too.

Standard library only at import time: the nightly summary job reads verdicts with the system Python.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cait.errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS, StaleVerdictError, VerdictError
from pipelines.provenance import file_sha256, write_record

if TYPE_CHECKING:
    from pipelines.verdict import Verdict

# 1: adds "schema_version", "inputs" and "compare_params_sha256" to the fields compare always wrote.
VERDICT_SCHEMA_VERSION = 1
STATUSES = ("pass", "fail", "inconclusive")  # pipelines.verdict's PASS, FAIL, INCONCLUSIVE (numpy-free here)
EXIT_BY_STATUS = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "inconclusive": EXIT_INCONCLUSIVE}  # the gate's exit status
FIELDS = {"schema_version": int, "status": str, "profile": str, "candidate": str, "baseline": str,
          "reasons": list, "notes": list, "rules": dict, "compared_steps": int, "candidate_steps": int,
          "baseline_steps": int, "modelzoo_lines": list, "inputs": dict, "compare_params_sha256": str}
RULE_FIELDS = {"passed": bool, "gating": bool, "summary": str, "numbers": dict, "thresholds": dict}
INPUT_ROLES = ("candidate", "record", "baseline", "fingerprints", "baseline_fingerprints")  # candidate and baseline
# always; record for a train stage run; the two fingerprint files where the precision rule judged them
REPORT_META = "cait-verdict-sha256"  # <meta name=... content=<sha256 of verdict.json>> in report.html
RERUN = "rerun the compare stage (dvc repro -f compare)"


@dataclass(frozen=True)
class VerdictFile:
    """A verdict file as read: where it is, the SHA-256 of its bytes, and its checked contents."""

    path: Path
    sha256: str
    data: dict

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def profile(self) -> str:
        return self.data["profile"]

    @property
    def reasons(self) -> list[str]:
        return self.data["reasons"]

    @property
    def inputs(self) -> dict[str, dict]:
        return self.data["inputs"]

    @property
    def from_train_run(self) -> bool:
        """True for the chain's verdict (a train stage run with its record), False for foreign logs."""
        return "record" in self.inputs


def compare_params_sha256(compare_params: dict) -> str:
    """Hash of the compare section that decided a verdict: changing a threshold makes the verdict stale."""
    from pipelines.params import hash_json

    return hash_json(compare_params)


def input_entry(spec: str | Path, sha256: str | None = None) -> dict:
    """{"path", "sha256"} of a file a verdict judged; an input that is no file (an MLflow run id) gets
    sha256 None and cannot be rechecked later."""
    path = Path(spec)
    if sha256 is None and path.is_file():
        sha256 = file_sha256(path)
    return {"path": str(spec), "sha256": sha256}


def write_verdict(path: Path | str, verdict: "Verdict", *, profile: str, candidate: str, baseline: str,
                  inputs: dict[str, dict], compare_params: dict, **context) -> dict:
    """Write the verdict file atomically and return what was written. `inputs` maps candidate, baseline
    (and record, for a train stage run) to `input_entry`s; `context` adds descriptive fields (baseline
    device, kind, seeds, MLflow run id)."""
    document = {**context, **verdict.to_dict(), "schema_version": VERDICT_SCHEMA_VERSION, "status": verdict.status,
                "profile": profile, "candidate": candidate, "baseline": baseline, "inputs": inputs,
                "compare_params_sha256": compare_params_sha256(compare_params)}
    check_verdict(document, path)  # never write what the readers would refuse
    write_record(path, document)
    return document


def _malformed(path, what: str) -> VerdictError:
    return VerdictError(f"{path}: malformed verdict ({what}); {RERUN}")


def check_verdict(data, path: Path | str = "verdict") -> None:
    """Raise one VerdictError naming the file and the first field that is missing, of the wrong type or
    of an unknown version."""
    if not isinstance(data, dict):
        raise _malformed(path, "not a JSON object")
    version = data.get("schema_version")
    if version is None:
        raise VerdictError(f"{path}: verdict written by an older harness (no schema_version); {RERUN}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _malformed(path, f"schema_version {version!r} is not a known version (1..{VERDICT_SCHEMA_VERSION})")
    if version > VERDICT_SCHEMA_VERSION:
        raise VerdictError(f"{path}: verdict schema_version {version} is newer than this harness understands "
                           f"({VERDICT_SCHEMA_VERSION}); update the harness (git pull) to read it")
    for key, kind in FIELDS.items():
        value = data.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _malformed(path, f"field {key!r} missing or not {kind.__name__}")
    if data["status"] not in STATUSES:
        raise _malformed(path, f"status {data['status']!r} is none of {', '.join(STATUSES)}")
    for name, rule in data["rules"].items():
        if not isinstance(rule, dict):
            raise _malformed(path, f"rules.{name} is not an object")
        for key, kind in RULE_FIELDS.items():
            if not isinstance(rule.get(key), kind):
                raise _malformed(path, f"rules.{name}.{key} missing or not {kind.__name__}")
    for role in ("candidate", "baseline"):
        if role not in data["inputs"]:
            raise _malformed(path, f"inputs.{role} missing")
    for role, entry in data["inputs"].items():
        if role not in INPUT_ROLES or not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or not isinstance(entry.get("sha256"), (str, type(None))):
            raise _malformed(path, f"inputs.{role} is not one of {', '.join(INPUT_ROLES)} with a path and sha256")
    contradiction = status_contradiction(data)
    if contradiction:
        raise _malformed(path, contradiction)


def status_contradiction(data: dict) -> str:
    """Why a verdict's status is not the one its own recorded rules give (pipelines.verdict.decide), or "".

    decide: any reason that makes the numbers meaningless -> inconclusive; otherwise fail when a gating rule
    failed, else pass. A `pass` therefore needs every rule named in `gate` recorded, gating, applicable and
    passed, and no gating rule that failed; a `fail` needs a gating rule that failed. (An inconclusive verdict
    never exits 0 and is not rechecked.) So a FAIL edited to "pass" by hand is refused, not gated."""
    status, rules = data["status"], data["rules"]
    gating = sorted(name for name, rule in rules.items() if rule["gating"])
    failed = [name for name in gating if not rules[name]["passed"]]
    named = data.get("gate")
    if status == "pass" and data.get("stopped_early"):
        return "status 'pass' but the run stopped early (stopped_early): a truncated curve never passes"
    if status == "pass":
        if not isinstance(named, list) or not named or not all(isinstance(name, str) for name in named):
            return "status 'pass' but field 'gate' names no rule that decided it"
        unrecorded = [name for name in named if name not in rules]
        if unrecorded:
            return f"status 'pass' but the gating rule {unrecorded[0]} has no result in 'rules'"
        if sorted(named) != gating:
            return f"status 'pass' but 'gate' names {', '.join(named)} and the rules gating are " \
                   f"{', '.join(gating) or 'none'}"
        if failed:
            return f"status 'pass' but its gating rule {failed[0]} failed (rules.{failed[0]}.passed is false)"
        unjudged = [name for name in gating if rules[name].get("applicable") is False]
        if unjudged:
            return f"status 'pass' but its gating rule {unjudged[0]} was not applied"
    elif status == "fail" and not failed:
        return "status 'fail' but no gating rule failed"
    return ""


def read_verdict(path: Path | str) -> VerdictFile:
    """Read and check a verdict file; a missing, old or malformed one is one VerdictError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VerdictError(f"{path}: no verdict; run the compare stage first (dvc repro compare)") from None
    except IsADirectoryError:
        raise VerdictError(f"{path}: is a folder, not a verdict file") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _malformed(path, "not valid JSON; truncated?") from None
    check_verdict(data, path)
    return VerdictFile(path, hashlib.sha256(raw).hexdigest(), data)


def stale_reasons(verdict: VerdictFile, compare_params: dict | None = None) -> list[str]:
    """Why the verdict no longer describes the files on disk: an input gone or changed since it was
    written, or other compare params now. Empty when it still holds. Inputs that are no file (an MLflow
    run) cannot be rechecked and are not reasons (`unchecked_inputs` lists them)."""
    reasons = unverifiable_reasons(verdict)
    for role, entry in verdict.inputs.items():
        if entry["sha256"] is None:
            continue
        path = Path(entry["path"])
        if not path.is_file():
            reasons.append(f"its {role} {path} is gone (a killed or unfinished stage?)")
            continue
        now = file_sha256(path)
        if now != entry["sha256"]:
            reasons.append(f"its {role} {path} changed since it was judged (SHA-256 {entry['sha256'][:12]} then, "
                           f"{now[:12]} now)")
    if compare_params is not None and compare_params_sha256(compare_params) != verdict.data["compare_params_sha256"]:
        reasons.append("the compare params in params.yaml changed since it was decided")
    return reasons


def unverifiable_reasons(verdict: VerdictFile) -> list[str]:
    """Why a verdict cannot be tied to any files: it names no SHA-256 at all, or none for an input that must be
    a file (the chain's curve, record and baseline; any input whose path is a file on disk now). Only an input
    that was read from MLflow (a run id: `sources.<role>.format` "mlflow" in a verdict of logs) may lack one.
    A verdict whose hashes were set to null could otherwise be gated against any files."""
    inputs = verdict.inputs
    if all(entry["sha256"] is None for entry in inputs.values()):
        return ["it names no SHA-256 of any input, so it cannot be tied to any files"]
    sources = verdict.data.get("sources") if isinstance(verdict.data.get("sources"), dict) else {}
    reasons = []
    for role, entry in inputs.items():
        if entry["sha256"] is not None:
            continue
        read_from = sources.get(role, {}).get("format") if isinstance(sources.get(role), dict) else None
        if verdict.from_train_run or Path(entry["path"]).is_file() or read_from != "mlflow":
            reasons.append(f"it names no SHA-256 for its {role} {entry['path']}, which is a file (or must be one)")
    return reasons


def unchecked_inputs(verdict: VerdictFile) -> list[str]:
    """Inputs named by something other than a file (an MLflow run id): the gate cannot recheck them."""
    return [f"{role} {entry['path']}" for role, entry in verdict.inputs.items() if entry["sha256"] is None]


def require_fresh(verdict: VerdictFile, compare_params: dict | None = None) -> None:
    """Raise StaleVerdictError (exit 3, inconclusive) when the verdict judged other files than those on disk."""
    reasons = stale_reasons(verdict, compare_params)
    if reasons:
        fix = "rerun the chain (dvc repro)" if verdict.from_train_run else "rerun the compare command that wrote it"
        raise StaleVerdictError(f"{verdict.path}: stale verdict, it proves nothing about the files on disk now "
                                f"({'; '.join(reasons)}); {fix}")


def report_mark(verdict_sha256: str) -> str:
    """The tag the report stage puts in report.html's <head>: which verdict file the page shows."""
    return f'<meta name="{REPORT_META}" content="{verdict_sha256}">'


def require_report_of(verdict: VerdictFile, html_path: Path) -> bool:
    """Raise StaleVerdictError when report.html exists but shows another verdict (a report stage that failed
    after compare wrote a new verdict). Returns False when there is no report yet, True when it matches."""
    try:
        page = html_path.read_text(errors="replace")
    except FileNotFoundError:
        return False
    if report_mark(verdict.sha256) not in page:
        # not `dvc repro report`: after `dvc exp apply` or `dvc checkout` DVC finds the stage up to date (report.html
        # is no DVC output) and renders nothing
        raise StaleVerdictError(f"{html_path}: the report shows another verdict than {verdict.path} (an older run, "
                                f"a report stage that failed, or outputs restored by dvc exp apply / dvc checkout); "
                                f"render it for this verdict: {report_command(verdict)}")
    return True


def report_command(verdict: VerdictFile) -> str:
    """The command that renders the report of this verdict file, as it can be run from the project root."""
    from pipelines.layout import VERDICT, run_dir

    default = verdict.path.resolve() == (run_dir(verdict.profile) / VERDICT).resolve()
    return "python -m pipelines.stages.report" + ("" if default else f" --verdict {verdict.path}")
