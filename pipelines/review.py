"""What a reviewer sees in MLflow: runs named for what they are, the verdict as columns, the baseline
as a run of its own and, in the candidate's run, the baseline's curve step by step.

MLflow's run list shows names and tags as columns, its charts show per-step series, and its compare
view overlays the same metric of several runs. So: the verdict and the rule that decided it are tags
(on the device's run and on the execution's parent run), one-value numbers stay in verdict.json (an
artifact) and in the run's description, and the per-step series are `loss` (the candidate),
`baseline_loss`, `loss_diff` and `loss_diff_rel` in the candidate's run, plus a baseline run, created once
per baseline file (found by the file's hash), whose `loss` is the reference curve: select it beside a
device's run and MLflow's own chart puts the two curves on one plot.

Pure functions here build names, tags, texts and series; `log_review` hands them to a RunLogger.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict

import numpy as np


BASELINE_ROLE = "baseline"
BASELINE_HASH_TAG = "cait.baseline_sha256"
# MLflow (3.15+) opens an experiment tag `mlflow.sharedViewState.<key>` as a saved runs-list view at
# `#/experiments/<id>/runs?viewStateShareKey=<key>`: its columns, their order and widths
VIEW_KEY = "cait-verdicts"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
EXPERIMENT_TAG = "dvc.experiment"  # the run's DVC experiment name (`dvc exp show`, `dvc exp apply <name>`)
VIEW_COLUMNS = ("verdict", "verdict.rule", "verdict.first_divergence_step", "localize.module", "localize.op",
                EXPERIMENT_TAG)


def run_name(profile: str, device: str, when: dt.datetime | None = None, suffix: str = "") -> str:
    """`default · cpu · 2026-11-28 16:40` (UTC): what the runs list shows instead of a timestamp id."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return f"{profile} · {device} · {when:%Y-%m-%d %H:%M}{suffix}"


def deciding_rules(verdict: dict) -> str:
    """The rule(s) that made the verdict what it is: the failing gating rules of a fail, every gating
    rule of a pass, and for an inconclusive verdict the gating rules that could not be evaluated
    (or `refused` when the comparison was refused before any rule ran)."""
    gating = {name: rule for name, rule in verdict.get("rules", {}).items() if rule.get("gating")}
    status = verdict.get("status")
    if status == "fail":
        names = [n for n, r in gating.items() if not r.get("passed") and r.get("applicable", True)]
    elif status == "pass":
        names = list(gating)
    else:
        names = [n for n, r in gating.items() if not r.get("applicable", True)] or ["refused"]
    return ",".join(names) or "none"


def verdict_tags(verdict: dict) -> dict[str, str]:
    """Columns for the runs list: the verdict, what decided it, where the curves part."""
    first = verdict.get("first_divergence_step")
    return {"verdict": str(verdict.get("status", "")), "verdict.rule": deciding_rules(verdict),
            "verdict.first_divergence_step": "" if first is None else str(first),
            **{f"rule.{name}": ("pass" if rule.get("passed") else "fail") if rule.get("applicable", True)
               else "n/a" for name, rule in verdict.get("rules", {}).items()}}


SEVERITY = {"pass": 0, "inconclusive": 1, "fail": 2}
SLOT_TAG = "cait.slot"  # a device run's `<profile>.<device>`: its column `verdict.<profile>.<device>` on the parent
# why, from the worst device
SHOWN_FROM_WORST = ("verdict.rule", "verdict.first_divergence_step", "localize.module", "localize.op")


def execution_tags(children: list[tuple[int, str, dict[str, str]]]) -> dict[str, str]:
    """The execution's parent run as a pure function of its device runs, given as (start_time, run_id, tags):
    `verdict.<profile>.<device>` per device (the latest run of a device that has a verdict: a rerun replaces it)
    and as `verdict` the worst of them (fail, then inconclusive, then pass: a night with one failing device
    fails). The columns that say why (SHOWN_FROM_WORST) come from the first device, by name, with that verdict.
    {} while no child has a verdict. The same children give the same tags whatever order they finished in."""
    latest: dict[str, dict[str, str]] = {}
    for _, _, tags in sorted(children, key=lambda c: (c[0], c[1])):
        if tags.get("verdict") in SEVERITY and tags.get(SLOT_TAG):
            latest[tags[SLOT_TAG]] = tags
    if not latest:
        return {}
    worst = max((tags["verdict"] for tags in latest.values()), key=SEVERITY.__getitem__)
    shown = next(tags for _, tags in sorted(latest.items()) if tags["verdict"] == worst)
    return {**{f"verdict.{slot}": tags["verdict"] for slot, tags in sorted(latest.items())},
            "verdict": worst, **{key: shown.get(key, "") for key in SHOWN_FROM_WORST}}


def description(verdict: dict, report: str, report_link: str = "", run_id: str = "") -> str:
    """The run's description (MLflow shows it on top of the run page): the verdict line, its reasons,
    each rule's summary and where the report is."""
    status = str(verdict.get("status", "")).upper()
    lines = [f"**Verdict: {status}** over {verdict.get('compared_steps', 0)} steps "
             f"(decided by {deciding_rules(verdict)})", ""]
    lines += [f"- {reason}" for reason in verdict.get("reasons", [])]
    lines += ["", "| rule | role | result | summary |", "|---|---|---|---|"]
    for name, rule in verdict.get("rules", {}).items():
        result = ("pass" if rule.get("passed") else "fail") if rule.get("applicable", True) else "n/a"
        summary = str(rule.get("summary", "")).replace("|", "\\|")
        lines.append(f"| {name} | {'gates' if rule.get('gating') else 'informs'} | {result} | {summary} |")
    lines += ["", f"Report: {report_where(report, report_link, run_id)}"]
    return "\n".join(lines)


def comparison_series(steps_c, loss_c, steps_b, loss_b) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-step (steps, values) of baseline_loss, loss_diff = c - b and loss_diff_rel = (c - b) / |b| on
    the steps both curves logged: the candidate's run then charts its curve beside the reference."""
    steps, ic, ib = np.intersect1d(np.asarray(steps_c), np.asarray(steps_b), return_indices=True)
    c = np.asarray(loss_c, dtype=np.float64)[ic]
    b = np.asarray(loss_b, dtype=np.float64)[ib]
    diff = c - b
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(b != 0, diff / np.abs(b), np.nan)
    return {"baseline_loss": (steps, b), "loss_diff": (steps, diff), "loss_diff_rel": (steps, rel)}


def baseline_run_name(profile: str, device: str, device_name: str, date: str) -> str:
    return f"baseline · {profile} · {device} ({device_name}) · {date[:10]}"


def log_review(logger, verdict: dict, *, profile: str, device: str, candidate, reference, baseline=None,
               baseline_path: str = "", baseline_sha256: str = "", report: str = "", report_link: str = "") -> None:
    """Everything above into the candidate's run (and the parent's verdict tags); with a stored baseline,
    also its run, made once per baseline file."""
    if not logger.active:
        return
    # one timestamp per baseline file: comparing again against the same baseline uploads rows the store
    # already holds (SQL stores keep one of identical rows), instead of doubling the charted series
    stamp = int(baseline_sha256[:10], 16) % 10**12 if baseline_sha256 else None
    for name, (steps, values) in comparison_series(candidate.steps, candidate.loss,
                                                   reference.steps, reference.loss).items():
        finite = np.isfinite(values)  # MLflow stores NaN, but a chart of them helps nobody
        for step, value in zip(steps[finite], values[finite]):
            logger.log_metrics({name: float(value)}, step=int(step), timestamp_ms=stamp)
    logger.flush()
    tags = verdict_tags(verdict)
    logger.set_tags({**tags, SLOT_TAG: f"{profile}.{device}",
                     "mlflow.note.content": description(verdict, report, report_link, logger.run_id)})
    logger.update_execution()  # the parent's verdict, recomputed from all its children (execution_tags)
    if baseline is not None and baseline_sha256:
        prov = baseline.provenance
        series = {"loss": (baseline.steps, baseline.loss)}
        for run in getattr(baseline, "runs", []) or []:
            series[f"loss_seed_{run.seed}"] = (baseline.steps, run.loss)
        params = {"profile": baseline.profile, "model": baseline.model, "device": prov.get("device", ""),
                  "device_name": prov.get("device_name", ""), "params_hash": prov.get("params_hash", ""),
                  "data_manifest_hash": prov.get("data_manifest_hash", ""), "git_commit": prov.get("git_commit", ""),
                  "date": prov.get("date", ""), "seeds": str(getattr(baseline, "seeds", "")),
                  "path": baseline_path}
        run_id = logger.ensure_run(
            BASELINE_HASH_TAG, baseline_sha256,
            run_name=baseline_run_name(baseline.profile, prov.get("device", ""), prov.get("device_name", ""),
                                       str(prov.get("date", ""))),
            tags={"cait.role": BASELINE_ROLE, "profile": baseline.profile, "baseline": baseline_path,
                  "mlflow.note.content": f"The stored baseline `{baseline_path}` (sha256 {baseline_sha256[:12]}), "
                                         f"recorded on {prov.get('device', '')} ({prov.get('device_name', '')}). "
                                         f"Select it beside a device's run to overlay the two `loss` curves."},
            params=params, series=series)
        if run_id:
            logger.set_tags({"cait.baseline_run_id": run_id})


CHART_SECTION = "cait-curves"


def _line_chart(uuid: str, title: str, keys: list[str]) -> dict:
    """A line chart of the runs-list's chart view (MLflow's RunsChartsLineCardConfig, as the UI stores it)."""
    return {"uuid": uuid, "type": "LINE", "deleted": False, "isGenerated": False, "metricSectionId": CHART_SECTION,
            "displayName": title, "metricKey": keys[0], "selectedMetricKeys": keys, "xAxisKey": "step",
            "xAxisScaleType": "linear", "scaleType": "linear", "lineSmoothness": 0, "runsCountToCompare": 10,
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": False,
            "useGlobalLineSmoothing": False, "selectedXAxisMetricKey": "",
            "range": {"xMin": None, "xMax": None, "yMin": None, "yMax": None}}


def verdict_view() -> dict:
    """The runs list with the verdict as its first columns (the UI's default shows source, models and
    datasets instead, and a user's column choice stays in their browser): what decided it, where the
    curves part, which module localize names, the DVC experiment. An execution's parent run (nightly) carries
    them for its worst device: its row is the one the list shows, with the device runs folded under it.
    Its chart view (`&compareRunsMode=CHART`) opens on the candidate's `loss` and the baseline's `baseline_loss`
    on one chart, then the per-step difference."""
    columns = [f"tags.`{tag}`" for tag in VIEW_COLUMNS]
    widths = dict(zip(columns, (90, 210, 210, 260, 160)))
    charts = [_line_chart("cait-loss-vs-baseline", "loss (candidate) and baseline_loss (reference)",
                          ["loss", "baseline_loss"]),
              _line_chart("cait-loss-diff-rel", "loss_diff_rel: (candidate - baseline) / |baseline|", ["loss_diff_rel"])]
    return {"selectedColumns": columns, "columnOrder": ["attributes.`Run Name`", *columns],
            "columnWidths": {"attributes.`Run Name`": 300, **widths},
            "compareRunCharts": charts, "isAccordionReordered": True,
            "compareRunSections": [{"uuid": CHART_SECTION, "name": "Loss against the baseline", "display": True,
                                    "isReordered": False}]}


def experiment_tags() -> dict[str, str]:
    """Tags every acceptance experiment carries: shown as model training (runs, charts), not as GenAI
    traces, and the verdict view."""
    return {"mlflow.experimentKind": "custom_model_development",
            VIEW_TAG_PREFIX + VIEW_KEY: json.dumps(verdict_view(), sort_keys=True)}


def view_link(ui: str, experiment_id: str) -> str:
    """The runs list in the verdict view ('' without a UI)."""
    if not (ui and experiment_id):
        return ""
    return f"{ui}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


DEFAULT_UI_HOST, DEFAULT_UI_PORT = "127.0.0.2", 5000  # where `make ui` (pipelines/ui.py) serves a local store


def mlflow_ui(ui_url: str | None, tracking_uri: str) -> str:
    """The MLflow UI's address: tracking.ui_url, else the tracking server itself when it is one, else (a local
    store) the address `make ui` serves it at; '' when the run was not tracked."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://{DEFAULT_UI_HOST}:{DEFAULT_UI_PORT}" if tracking_uri else ""


def run_link(ui: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """The run's page in the MLflow UI ('' when there is no UI or the run has no real id yet)."""
    if not (ui and experiment_id and run_id) or run_id.startswith("local-"):
        return ""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")


REPORT_ARTIFACT = "report/report.html"  # where the report stage attaches the page in the run


def report_link(tracking_cfg, record: dict) -> str:
    """The report that judged the run, in the MLflow UI: the run's artifact (the report stage attaches it), which
    exists for every run, also for one of `dvc exp run --temp` whose folder is gone ('' without a real run id)."""
    ui = mlflow_ui(getattr(tracking_cfg, "ui_url", None), record.get("tracking_uri", ""))
    return run_link(ui, record.get("mlflow_experiment_id", ""), record.get("mlflow_run_id", ""),
                    f"artifactPath/{REPORT_ARTIFACT}")


def report_where(path: str, link: str, run_id: str = "") -> str:
    """Where the run's report is, as markdown: its artifact (a link in the UI), and its path where it exists."""
    artifact = f"[{REPORT_ARTIFACT}]({link})" if link else f"`{REPORT_ARTIFACT}`"
    where = f"the run's artifact {artifact}" if run_id or link else ""
    if path:
        where += ("; " if where else "") + f"in the workspace `{path}` (until the next run replaces it)"
    return where or "none (tracking off and no workspace copy)"


def timing_rule(verdict: dict, record: dict | None, baseline, rules):
    """The throughput rule where it only informs: judged from the run's measured samples/s (run.json) against
    the baseline's, for the report and MLflow. It stays out of verdict.json, a DVC output that holds only what
    the same curve always gives; where compare.gate names it, the verdict holds it and None is returned.
    None too for logs (no run record) and a verdict whose policy does not name it."""
    from pipelines.verdict import throughput_rule

    policy = verdict.get("policy") or {}
    if record is None or rules is None or "throughput" in verdict.get("rules", {}) \
            or "throughput" not in policy.get("inform", []):
        return None
    baseline_ips = baseline.provenance.get("mean_samples_per_s") if baseline is not None else None
    return throughput_rule(record.get("mean_samples_per_s"), baseline_ips, gating=False,
                           **rules.throughput.model_dump())


def with_timing(verdict: dict, rule) -> dict:
    """The verdict as reviewers see it (report page, MLflow tags and description): verdict.json's rules plus
    the informing throughput rule, its flag among the reasons as `decide` words an informing rule's."""
    if rule is None:
        return verdict
    shown = {**verdict, "rules": {**verdict.get("rules", {}), rule.name: asdict(rule)},
             "reasons": list(verdict.get("reasons", [])), "notes": list(verdict.get("notes", []))}
    if not rule.applicable:
        shown["notes"].append(f"{rule.name} rule not applied: {rule.summary}")
    elif not rule.passed and shown["status"] != "inconclusive":
        shown["reasons"].insert(max(0, len(shown["reasons"]) - 1), f"informative rule {rule.name} fails: {rule.summary}")
    return shown


# The figures `dvc metrics show` and `dvc exp show` list per gating rule: (column, the rule's number). A verdict
# holds dozens of numbers; these say how far from its threshold each rule is. The rest stays in verdict.json.
HEADLINES = {"envelope": (("x_tol", "max_ratio"),),  # the worst step's |d|, in multiples of its tolerance
             "modelzoo": (("mre", "mean_relative_error"), ("mae", "mean_absolute_error")),
             "strict": (("rel", "mean_abs_relative_error"),),
             "band": (("outside", "outside_fraction"),),
             "trend": (("drift", "drift_relative"),),
             "throughput": (("x", "ratio"),),
             "precision": (("lost", "tensors_lost"),),  # tensors in the low format where the reference keeps fp32
             "layers": (("outside", "entries_outside"),)}  # step 0's tensors outside localize's tolerance
FIGURE_DIGITS = 4  # significant digits of every non-integer figure in metrics.json


def figure(value) -> int | str:
    """An integer as it is; any other number as text with FIGURE_DIGITS significant digits. `dvc metrics show`
    rounds numbers to 5 decimals (4.2e-6 shows as 0.0) and cannot be told otherwise per file: text it shows
    as written."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return f"{float(value):.{FIGURE_DIGITS}g}"


def flat_metrics(verdict: dict) -> dict[str, int | str]:
    """A small flat metrics file for `dvc metrics show` and `dvc exp show`, one line of at most 120 columns for
    the default gate: the verdict, the rule(s) that decided it, the first divergence step (absent when the
    curves never leave the gating tolerance) and each gating rule's headline figures (HEADLINES), every one
    with its significant digits (`figure`). The full verdict stays in verdict.json."""
    first = verdict.get("first_divergence_step")
    out: dict[str, int | str] = {"verdict": str(verdict.get("status", "")), "rule": deciding_rules(verdict)}
    if first is not None:
        out["first_step"] = int(first)
    for name, rule in verdict.get("rules", {}).items():
        if not rule.get("gating") or not rule.get("applicable", True):
            continue  # an informing rule's numbers are in verdict.json
        numbers = rule.get("numbers", {})
        for column, key in HEADLINES.get(name, ()):
            value = numbers.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{name}.{column}"] = figure(value)
    return out
