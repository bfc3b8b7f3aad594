"""Loss curves from the logs users already have, and the ModelZoo log line our train stage prints.

Formats (`load_curve(..., fmt=...)`; `auto` looks at the text):

- `dllogger`: ModelZoo tcap_dllogger stdout,
  `TCAPPDLL <date> <time> - Epoch: 0 Iteration: 0  rank : 0  train.loss : 6.99  train.ips : 3.66 imgs/s`.
  Searched over the whole text, not line by line, as ModelZoo's loss.py does: lines of several ranks
  may be glued together without a newline. Rank 0 by default. Logs without the Epoch/Iteration
  prefix fall back to ModelZoo's own patterns (`rank : 0  train.loss : x`, then `loss x`), numbered
  by position.
- `dllogger-json`: dllogger's JSON-lines stream (`DLLL {"step": [epoch, iteration], "data": {...}}`).
- `epoch`: per-epoch lines such as `Epoch[0]: train_loss 4.1116 acc1 6.46 ...` (step = epoch).
- `regex`: a user pattern with a `loss` group (or one group) and optionally a `step` group.
- `csv`: a curve CSV (columns step and loss; others ignored).
- `json`: {"steps": [...], "loss": [...]}, a list of {"step": s, "loss": v}, or a baseline file.
- `mlflow`: an MLflow run id (`mlflow:<id>`, `runs:/<id>`, or a bare 32-hex id): its `loss` history.

Loss values keep the exact text the log printed, parsed with float(), so the ModelZoo numbers
computed from an import are the numbers ModelZoo's script computes from the same file.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import BaselineError, ConfigError
from pipelines.curves import Curve, read_curve_csv

FORMATS = ("auto", "dllogger", "dllogger-json", "epoch", "regex", "csv", "json", "mlflow")
DLLOGGER_PREFIX = "TCAPPDLL"
# the whole record, wherever it sits in the text; \s+ tolerates the double spaces and a glued newline
DLLOGGER_RECORD = re.compile(
    r"Epoch: (?P<epoch>\d+) Iteration: (?P<step>\d+)\s+rank : (?P<rank>\d+)\s+train\.loss : (?P<loss>\S+)")
# ModelZoo loss.py's own patterns (template, then fallback), used when the record pattern finds nothing
MODELZOO_TEMPLATE = r"rank : {rank}  train\.loss : ([\d\.e-]+)"
MODELZOO_FALLBACK = re.compile(r"loss ([\d\.e-]+)")
EPOCH_RECORD = re.compile(r"Epoch\[(?P<epoch>\d+)\]:(?P<rest>[^\n]*)")
MLFLOW_ID = re.compile(r"^(?:mlflow:|runs:/)?([0-9a-f]{32})/?$")


@dataclass
class ImportedCurve:
    curve: Curve
    source: str  # what was read, as a user names it
    format: str
    notes: list[str] = field(default_factory=list)  # how the steps were numbered, what was skipped
    baseline: object | None = None  # a pipelines.baselines.Baseline when the file was one


def dllogger_line(row: dict, epoch: int = 0, rank: int = 0) -> str:
    """The per-step line ModelZoo's tcap_dllogger prints (double spaces included); `parse_dllogger` reads it."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    return (f"{DLLOGGER_PREFIX} {stamp} - Epoch: {epoch} Iteration: {row['step']}  rank : {rank}  "
            f"train.loss : {row['loss']}  train.ips : {row['samples_per_s']} imgs/s")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _to_float(token: str, source: str, text: str, offset: int) -> float:
    try:
        return float(token)
    except ValueError:
        raise BaselineError(f"{source}:{_line_of(text, offset)}: loss {token!r} is not a number") from None


def _number_steps(epochs: list[int], iterations: list[int], source: str, notes: list[str]) -> np.ndarray:
    """Iteration numbers when they increase; when they restart each epoch, the position in the log."""
    steps = np.array(iterations, dtype=np.int64)
    if len(steps) > 1 and np.any(np.diff(steps) <= 0):
        restarts = all(b > a or e2 > e1 for a, b, e1, e2 in zip(iterations, iterations[1:], epochs, epochs[1:]))
        if not restarts:
            i = int(np.flatnonzero(np.diff(steps) <= 0)[0])
            raise BaselineError(f"{source}: iteration {iterations[i + 1]} follows {iterations[i]} within epoch "
                                f"{epochs[i + 1]}; several runs in one log? split it, or pick a --rank")
        notes.append(f"{source}: iteration numbers restart each epoch; steps are numbered by position in the log")
        steps = np.arange(len(steps), dtype=np.int64)
    return steps


def parse_dllogger(text: str, rank: int = 0, source: str = "log") -> ImportedCurve:
    """ModelZoo dllogger stdout: every record of `rank` in the whole text (glued lines included)."""
    notes: list[str] = []
    matches = list(DLLOGGER_RECORD.finditer(text))
    if matches:
        ranks = sorted({int(m["rank"]) for m in matches})
        mine = [m for m in matches if int(m["rank"]) == rank]
        if not mine:
            raise BaselineError(f"{source}: no records of rank {rank} (the log has ranks "
                                f"{', '.join(map(str, ranks))}); pick one with --rank")
        if len(ranks) > 1:
            notes.append(f"{source}: the log holds ranks {', '.join(map(str, ranks))}; read rank {rank}")
        loss = [_to_float(m["loss"], source, text, m.start("loss")) for m in mine]
        steps = _number_steps([int(m["epoch"]) for m in mine], [int(m["step"]) for m in mine], source, notes)
        return ImportedCurve(Curve(steps, np.array(loss)), source, "dllogger", notes)
    # no Epoch/Iteration prefix: ModelZoo's own patterns, numbered by position as ModelZoo does
    for pattern, label in ((re.compile(MODELZOO_TEMPLATE.format(rank=rank)), "ModelZoo's template pattern"),
                           (MODELZOO_FALLBACK, "ModelZoo's fallback pattern `loss <x>`")):
        found = list(pattern.finditer(text))
        if found:
            loss = [_to_float(m[1], source, text, m.start(1)) for m in found]
            notes.append(f"{source}: no dllogger records with step numbers; read {len(loss)} values with {label}, "
                         f"numbered by position")
            return ImportedCurve(Curve(np.arange(len(loss)), np.array(loss)), source, "dllogger", notes)
    raise BaselineError(f"{source}: no ModelZoo dllogger records (`rank : {rank}  train.loss : <x>`) found; "
                        f"give the format with --format, or a pattern with --regex")


def _dllogger_step(step) -> tuple[int, int] | None:
    """dllogger's step field: an int, [epoch, iteration, ...], or {"epoch": e, "iteration"/"step": i}; None
    for records that are not per-step (PARAMETER, epoch summaries given as [epoch] only)."""
    if isinstance(step, bool):
        return None
    if isinstance(step, int):
        return 0, step
    if isinstance(step, list) and len(step) >= 2 and all(isinstance(s, int) for s in step[:2]):
        return step[0], step[1]
    if isinstance(step, dict):
        it = step.get("iteration", step.get("step"))
        if isinstance(it, int):
            return int(step.get("epoch", 0)), it
    return None


def parse_dllogger_json(text: str, rank: int = 0, key: str = "train.loss", source: str = "log") -> ImportedCurve:
    """dllogger's JSON-lines stream: one `DLLL {...}` (or bare JSON) record a line."""
    epochs, iterations, loss, ranks, notes = [], [], [], set(), []
    skipped = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        body = line[5:] if line.startswith("DLLL ") else line
        try:
            record = json.loads(body)
        except json.JSONDecodeError:
            raise BaselineError(f"{source}:{line_no}: not a JSON record (truncated line?)") from None
        data = record.get("data") if isinstance(record, dict) else None
        step = _dllogger_step(record.get("step")) if isinstance(record, dict) else None
        if not isinstance(data, dict) or step is None or key not in data:
            skipped += 1
            continue
        record_rank = data.get("rank", record.get("rank", 0))
        ranks.add(record_rank)
        if record_rank != rank:
            continue
        value = data[key]
        if isinstance(value, str):
            value = _to_float(value, source, text, 0)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BaselineError(f"{source}:{line_no}: {key} {value!r} is not a number")
        epochs.append(step[0])
        iterations.append(step[1])
        loss.append(float(value))
    if not loss:
        raise BaselineError(f"{source}: no dllogger JSON records with data[{key!r}] for rank {rank}")
    if skipped:
        notes.append(f"{source}: skipped {skipped} record(s) without a per-step {key}")
    if len(ranks) > 1:
        notes.append(f"{source}: the log holds ranks {', '.join(map(str, sorted(ranks)))}; read rank {rank}")
    steps = _number_steps(epochs, iterations, source, notes)
    return ImportedCurve(Curve(steps, np.array(loss)), source, "dllogger-json", notes)


def parse_epoch_lines(text: str, key: str = "train_loss", source: str = "log") -> ImportedCurve:
    """`Epoch[e]: train_loss x acc1 y ... | val_loss z ...`: one point per epoch, step = epoch."""
    steps, loss = [], []
    value_pattern = re.compile(rf"(?<![\w.]){re.escape(key)}[\s:=]+(\S+)")
    for m in EPOCH_RECORD.finditer(text):
        found = value_pattern.search(m["rest"])
        if found:
            steps.append(int(m["epoch"]))
            loss.append(_to_float(found[1].rstrip(","), source, text, m.start("rest") + found.start(1)))
    if not loss:
        raise BaselineError(f"{source}: no `Epoch[<n>]: {key} <x>` lines found")
    return ImportedCurve(Curve(np.array(steps), np.array(loss)), source, "epoch",
                         [f"{source}: one point per epoch ({key}); steps are epoch numbers"])


def parse_regex(text: str, pattern: str, source: str = "log") -> ImportedCurve:
    """A user's pattern, searched over the whole text: a `loss` group (or its only group) and optionally
    a `step` group; without one, values are numbered by position."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--regex {pattern!r}: not a valid regular expression ({exc})") from None
    names = regex.groupindex
    if "loss" not in names and regex.groups != 1:
        raise ConfigError(f"--regex {pattern!r}: needs a group named `loss` (?P<loss>...) or exactly one group")
    loss_group = "loss" if "loss" in names else 1
    steps, loss = [], []
    for m in regex.finditer(text):
        loss.append(_to_float(m[loss_group], source, text, m.start(loss_group)))
        if "step" in names:
            steps.append(int(m["step"]))
    if not loss:
        raise BaselineError(f"{source}: the pattern {pattern!r} matches nothing")
    notes = [] if "step" in names else [f"{source}: the pattern has no `step` group; values numbered by position"]
    return ImportedCurve(Curve(np.array(steps) if steps else np.arange(len(loss)), np.array(loss)), source,
                         "regex", notes)


def parse_curve_json(data, source: str = "curve") -> ImportedCurve:
    """{"steps", "loss"} or [{"step", "loss"}, ...]; a baseline file (schema_version) comes back whole."""
    if isinstance(data, dict) and "schema_version" in data:
        from pipelines.baselines import baseline_from_json

        baseline = baseline_from_json(data, source)
        return ImportedCurve(baseline.curve, source, "json", [], baseline)
    if isinstance(data, dict) and isinstance(data.get("loss"), list):
        loss = data["loss"]
        steps = data.get("steps", data.get("step"))
        if steps is None:
            steps = list(range(len(loss)))
    elif isinstance(data, list) and all(isinstance(r, dict) and "loss" in r for r in data):
        loss = [r["loss"] for r in data]
        steps = [r.get("step", i) for i, r in enumerate(data)]
    else:
        raise BaselineError(f"{source}: expected {{\"steps\": [...], \"loss\": [...]}} or a list of "
                            f"{{\"step\": s, \"loss\": v}} records")
    if not isinstance(steps, list) or len(steps) != len(loss):
        raise BaselineError(f"{source}: 'steps' and 'loss' must be lists of equal length")
    if not loss:
        raise BaselineError(f"{source}: the curve has no steps")
    for what, values in (("loss", loss), ("steps", steps)):
        bad = next((v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool)), None)
        if bad is not None:
            raise BaselineError(f"{source}: {what} holds a non-numeric value {bad!r}")
    if any(s != int(s) for s in steps):
        raise BaselineError(f"{source}: step numbers must be whole numbers")
    return ImportedCurve(Curve(np.array(steps, dtype=np.int64), np.array(loss, dtype=np.float64)), source, "json")


def read_mlflow_run(run_id: str, tracking_uri: str, metric: str = "loss") -> ImportedCurve:
    """The full history of a run's metric (the train stage logs `loss` at every step)."""
    from cait.errors import TrackingError

    try:
        from mlflow.tracking import MlflowClient

        history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, metric)
    except Exception as exc:  # MlflowException, connection and database errors alike
        raise TrackingError(f"MLflow run {run_id} in {tracking_uri}: cannot read metric {metric!r} "
                            f"({str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__}); "
                            f"check the run id and MLFLOW_TRACKING_URI") from None
    if not history:
        raise BaselineError(f"MLflow run {run_id}: no {metric!r} metric logged")
    by_step = {}
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m.value  # a step logged twice (a resumed run): the last value
    notes = [] if len(by_step) == len(history) else [
        f"MLflow run {run_id}: {len(history) - len(by_step)} step(s) logged twice; kept the last value"]
    steps = sorted(by_step)
    return ImportedCurve(Curve(np.array(steps), np.array([by_step[s] for s in steps])), f"mlflow:{run_id}",
                         "mlflow", notes)


def detect_format(text: str) -> str:
    head = text.lstrip()[:4096]
    if DLLOGGER_RECORD.search(text) or "train.loss : " in head:
        return "dllogger"
    if head.startswith("DLLL ") or (head.startswith("{") and '"data"' in head.splitlines()[0]):
        return "dllogger-json"
    if head.startswith("{") or head.startswith("["):
        return "json"
    first = head.splitlines()[0] if head else ""
    if "step" in first.split(",") and "loss" in first.split(","):
        return "csv"
    if EPOCH_RECORD.search(text):
        return "epoch"
    if MODELZOO_FALLBACK.search(text):
        return "dllogger"
    raise BaselineError("cannot tell the log's format; give it with --format (" + ", ".join(FORMATS[1:]) + ")")


def load_curve(spec: str, fmt: str = "auto", rank: int = 0, regex: str | None = None,
               tracking_uri: str | None = None, metric: str = "loss") -> ImportedCurve:
    """Read a curve from a file path or an MLflow run id (`mlflow:<id>`, `runs:/<id>` or a bare id)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if regex is not None and fmt == "auto":
        fmt = "regex"
    path = Path(spec)
    run = MLFLOW_ID.match(spec)
    if fmt == "mlflow" or (fmt == "auto" and run and not path.exists()):
        if not run:
            raise ConfigError(f"{spec!r}: not an MLflow run id (32 hex digits, optionally mlflow:<id>)")
        if not tracking_uri:
            raise ConfigError(f"{spec}: an MLflow run id needs a tracking store (MLFLOW_TRACKING_URI or tracking.uri)")
        return read_mlflow_run(run[1], tracking_uri, metric)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise BaselineError(f"{spec}: no such file (and not an MLflow run id)") from None
    except IsADirectoryError:
        raise BaselineError(f"{spec}: is a folder; name the log file") from None
    if not text.strip():
        raise BaselineError(f"{spec}: the file is empty")
    if fmt == "auto":
        fmt = detect_format(text)
    if fmt == "dllogger":
        return parse_dllogger(text, rank, spec)
    if fmt == "dllogger-json":
        return parse_dllogger_json(text, rank, source=spec)
    if fmt == "epoch":
        return parse_epoch_lines(text, source=spec)
    if fmt == "regex":
        if not regex:
            raise ConfigError("--format regex needs --regex PATTERN")
        return parse_regex(text, regex, spec)
    if fmt == "csv":
        return ImportedCurve(read_curve_csv(path), spec, "csv")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{spec}: not valid JSON (at character {exc.pos}; truncated?)") from None
    return parse_curve_json(data, spec)
