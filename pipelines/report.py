"""The report: a loss-overlay PNG, a self-contained HTML page and a JUnit XML file.

Everything renders from the files the earlier stages wrote (curve, baseline, verdict, run record);
the HTML embeds its figure, so it opens offline and can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import html
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

STATUS_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}


def smooth(values: np.ndarray) -> np.ndarray:
    """ModelZoo's display smoothing: savgol_filter(loss, 5, 1); too-short curves are shown raw."""
    from scipy.signal import savgol_filter

    finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return savgol_filter(finite, 5, 1) if len(values) >= 5 else values


def render_overlay(path: Path, candidate, baseline, verdict: dict, labels: tuple[str, str], band=None) -> None:
    """Baseline (dashed) and candidate (solid), raw and smoothed, over a panel of the per-step relative difference.

    `band` is a multi-run baseline's (lower, upper, label) on the baseline's steps (Baseline.band), shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[3, 1.4],
                                      constrained_layout=True)
    cand_label, base_label = labels
    if band is not None:
        lower, upper, band_label = band
        top.fill_between(baseline.steps, lower, upper, color="#57606a", alpha=0.18, linewidth=0, label=band_label)
    for curve, label, style, colour in ((baseline, base_label, "--", "#57606a"), (candidate, cand_label, "-", "#0969da")):
        top.plot(curve.steps, curve.loss, style, color=colour, alpha=0.3, linewidth=0.8)
        top.plot(curve.steps, smooth(curve.loss), style, color=colour, linewidth=1.8, label=f"{label} (smoothed)")
    top.set_ylabel("Loss")
    status = verdict["status"]
    top.set_title(f"{verdict['profile']}: {status.upper()}", color=STATUS_COLOURS.get(status, "black"))
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    n = min(len(candidate.loss), len(baseline.loss))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (candidate.loss[:n] - baseline.loss[:n]) / baseline.loss[:n] * 100
    bottom.plot(candidate.steps[:n], rel, color="#8250df", linewidth=1)
    bottom.axhline(0, color="black", linewidth=0.6)
    tol = verdict.get("rules", {}).get("strict", {}).get("thresholds", {}).get("max_mean_abs_relative_error")
    if tol is not None:
        for sign in (1, -1):
            bottom.axhline(sign * tol * 100, color="#cf222e", linewidth=0.8, linestyle=":")
    bottom.set_ylabel("(cand - base) / base, %")
    bottom.set_xlabel("Iteration")
    bottom.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def render_html(path: Path, verdict: dict, environments: list[tuple[str, str, str]], record: dict,
                overlay_png: Path, throughput: tuple[str, str]) -> None:
    status = verdict["status"]
    png = base64.b64encode(Path(overlay_png).read_bytes()).decode()
    rule_rows = [[name, "gates" if r["gating"] else "informs", "pass" if r["passed"] else "fail",
                  ", ".join(f"{k} = {_fmt(v)}" for k, v in r["numbers"].items()),
                  ", ".join(f"{k} = {_fmt(v)}" for k, v in r["thresholds"].items()), r["summary"]]
                 for name, r in verdict["rules"].items()]
    rule_classes = ["" if r["passed"] else "bad" for r in verdict["rules"].values()]
    env_classes = ["diff" if a != b else "" for _, a, b in environments]
    numbers = [["compared steps", verdict["compared_steps"]], ["candidate steps", verdict["candidate_steps"]],
               ["baseline steps", verdict["baseline_steps"]]]
    numbers += [[k.replace("_", " "), _fmt(v)] for k, v in verdict["absolute"].items()]
    run_id = record.get("mlflow_run_id") or "(tracking disabled)"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CaiT acceptance: {html.escape(verdict['profile'])} {status}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1f2328; }}
.banner {{ padding: 1rem 1.5rem; border-radius: 6px; color: white; background: {STATUS_COLOURS.get(status, '#555')}; }}
.banner h1 {{ margin: 0; font-size: 1.6rem; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; width: 100%; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; font-size: 0.9rem; vertical-align: top; }}
th {{ background: #f6f8fa; }}
tr.bad td {{ background: #ffebe9; }} tr.diff td {{ background: #fff8c5; }}
pre {{ background: #f6f8fa; padding: 0.8rem; overflow-x: auto; }}
img {{ max-width: 100%; }}
</style></head><body>
<div class="banner" id="verdict"><h1>Verdict: {status.upper()}</h1>
<p>profile <b>{html.escape(verdict['profile'])}</b>, baseline <code>{html.escape(verdict['baseline'])}</code>
recorded on {html.escape(verdict.get('baseline_device', ''))}</p></div>
<h2>Why</h2><ul id="reasons">{''.join(f'<li>{html.escape(r)}</li>' for r in verdict['reasons'])}</ul>
{('<h2>Notes</h2><ul>' + ''.join(f'<li>{html.escape(n)}</li>' for n in verdict['notes']) + '</ul>') if verdict['notes'] else ''}
<h2>Loss curves</h2><img alt="loss overlay" src="data:image/png;base64,{png}">
<h2>Rules</h2>{_table(['rule', 'role', 'result', 'numbers', 'thresholds', 'summary'], rule_rows, rule_classes)}
<h2>ModelZoo output</h2><pre>{html.escape(chr(10).join(verdict['modelzoo_lines']))}</pre>
<h2>Numbers</h2>{_table(['quantity', 'value'], numbers)}
<h2>Throughput</h2>{_table(['', 'baseline', 'candidate'], [['mean samples/s', *throughput]])}
<h2>Environments</h2><p>Rows that differ are highlighted.</p>
{_table(['', 'baseline', 'candidate'], [list(r) for r in environments], env_classes)}
<h2>Tracking</h2><p>MLflow run <code>{html.escape(run_id)}</code> in <code>{html.escape(record.get('tracking_uri', ''))}</code></p>
</body></html>
"""
    path.write_text(page)


def render_junit(path: Path, verdict: dict) -> None:
    """One test case per rule; an inconclusive verdict makes each an error, a failed gating rule a failure."""
    status = verdict["status"]
    suite = ET.Element("testsuite", name=f"cait-acceptance.{verdict['profile']}")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for name, rule in verdict["rules"].items() or {"verdict": None}.items():
        case = ET.SubElement(suite, "testcase", classname=f"acceptance.{verdict['profile']}", name=name)
        counts["tests"] += 1
        numbers = ", ".join(f"{k}={v}" for k, v in (rule or {}).get("numbers", {}).items())
        if status == "inconclusive":
            ET.SubElement(case, "error", message="inconclusive: " + "; ".join(verdict["reasons"]))
            counts["errors"] += 1
        elif rule and not rule["passed"] and rule["gating"]:
            ET.SubElement(case, "failure", message=rule["summary"]).text = numbers
            counts["failures"] += 1
        elif rule and not rule["passed"]:
            ET.SubElement(case, "skipped", message=f"informative rule failed: {rule['summary']}")
            counts["skipped"] += 1
        ET.SubElement(case, "system-out").text = numbers
    for key, value in counts.items():
        suite.set(key, str(value))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
