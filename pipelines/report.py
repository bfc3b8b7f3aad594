"""The report: a loss-overlay PNG, a self-contained HTML page and a JUnit XML file.

Everything renders from the files the earlier stages wrote (curve, baseline, verdict, run record);
the HTML embeds its figure, so it opens offline and can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from cait.files import atomic_output, atomic_write_text

STATUS_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}
MAX_DRAWN_POINTS = 4000  # a ~1000-pixel-wide figure shows no more; longer series are drawn as their min/max envelope
MAX_MARKED_POINTS = 400  # the zoom marks each step (and draws a bar per step) up to this many steps


def for_display(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_DRAWN_POINTS):
    """At most ~max_points of (steps, values) that draw the same picture: each bucket's minimum and maximum,
    so no spike or NaN gap disappears. Drawing every point of a 10^6-step curve takes matplotlib seconds."""
    steps, values = np.asarray(steps), np.asarray(values)
    n = len(values)
    if n <= max_points:
        return steps, values
    k = -(-n // (max_points // 2))  # points per bucket
    padded = np.concatenate([values, np.repeat(values[-1:], (-n) % k)]).reshape(-1, k)
    first = np.arange(len(padded)) * k
    keep = np.unique(np.concatenate([first + np.argmin(padded, axis=1), first + np.argmax(padded, axis=1), [0, n - 1]]))
    keep = keep[keep < n]
    return steps[keep], values[keep]


def _stride(n: int, max_points: int = MAX_DRAWN_POINTS) -> slice:
    return slice(None, None, max(1, -(-n // max_points)))


def smooth(values: np.ndarray) -> np.ndarray:
    """ModelZoo's display smoothing: savgol_filter(loss, 5, 1); too-short curves are shown raw."""
    from scipy.signal import savgol_filter

    finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return savgol_filter(finite, 5, 1) if len(values) >= 5 else values


BASELINE_COLOUR = "#e8590c"  # orange: stands out against the candidate's blue, the envelope's amber and the grey band


def render_overlay(path: Path, candidate, baseline, verdict: dict, labels: tuple[str, str], band=None,
                   envelope=None) -> None:
    """Candidate (solid blue) and baseline (dashed orange, drawn on top), raw and smoothed, over a panel of the
    per-step difference.

    `envelope` is (tolerance, label): the envelope rule's per-step allowed |d| on the baseline's steps
    (k x envelope + floor); it is drawn as reference +- tolerance, and the lower panel then shows |d| against
    it on a log scale. `band` is a multi-run baseline's (lower, upper, label) on the baseline's steps
    (Baseline.band): a spread over other seeds, shaded, clamped at zero (a loss is never negative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[3, 1.4],
                                      constrained_layout=True)
    cand_label, base_label = labels
    every = _stride(len(baseline.steps))
    if band is not None:
        lower, upper, band_label = band
        top.fill_between(baseline.steps[every], np.maximum(np.asarray(lower), 0.0)[every], np.asarray(upper)[every],
                         color="#57606a", alpha=0.15, linewidth=0, label=band_label)
    if envelope is not None:
        tol, envelope_label = envelope
        tol = np.asarray(tol, dtype=np.float64)
        top.fill_between(baseline.steps[every], (baseline.loss - tol)[every], (baseline.loss + tol)[every],
                         color="#bf8700", alpha=0.45, linewidth=0, label=envelope_label)
    # the baseline is drawn last, dashed, in a contrasting colour: on a pass it lies on the candidate and
    # must stay visible above it
    for curve, label, style, colour, width in ((candidate, cand_label, "-", "#0969da", 2.4),
                                                (baseline, base_label, "--", BASELINE_COLOUR, 1.4)):
        top.plot(*for_display(curve.steps, curve.loss), style, color=colour, alpha=0.3, linewidth=0.8)
        top.plot(*for_display(curve.steps, smooth(curve.loss)), style, color=colour, linewidth=width,
                 label=f"{label} (smoothed)")
    top.set_ylabel("Loss")
    status = verdict["status"]
    stopped = verdict.get("stopped_early")
    title = f"{verdict['profile']}: {status.upper()}"
    if stopped:  # fail fast: the candidate's curve ends where the run stopped, said in the title and on the plot
        title += f" (stopped early at step {stopped.get('stopped_step')})"
        top.axvline(stopped.get("stopped_step"), color=STATUS_COLOURS.get(status, "black"), linestyle=":",
                    linewidth=1.2, label=f"stopped early at step {stopped.get('stopped_step')} (fail fast)")
    top.set_title(title, color=STATUS_COLOURS.get(status, "black"))
    top.legend(loc="upper right", fontsize="small")
    top.grid(alpha=0.3)
    n = min(len(candidate.loss), len(baseline.loss))
    if envelope is not None:
        paired = np.intersect1d(candidate.steps, baseline.steps)
        c = candidate.loss[np.searchsorted(candidate.steps, paired)]
        i = np.searchsorted(baseline.steps, paired)
        diff = np.abs(c - baseline.loss[i])
        shown = np.where(diff > 0, diff, np.nan)  # log scale: exact agreement is drawn as a gap
        bottom.semilogy(*for_display(paired, shown), color="#8250df", linewidth=1, label="|candidate - reference|")
        bottom.semilogy(*for_display(paired, np.asarray(envelope[0], dtype=np.float64)[i]), color="#bf8700",
                        linewidth=1.2, label="envelope tolerance")
        bottom.legend(loc="lower right", fontsize="small")
        bottom.set_ylabel("|d| (log)")
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (candidate.loss[:n] - baseline.loss[:n]) / baseline.loss[:n] * 100
        bottom.plot(*for_display(candidate.steps[:n], rel), color="#8250df", linewidth=1)
        bottom.axhline(0, color="black", linewidth=0.6)
        tol = verdict.get("rules", {}).get("strict", {}).get("thresholds", {}).get("max_mean_abs_relative_error")
        if tol is not None:
            for sign in (1, -1):
                bottom.axhline(sign * tol * 100, color="#cf222e", linewidth=0.8, linestyle=":")
        bottom.set_ylabel("(cand - base) / base, %")
    bottom.set_xlabel("Iteration")
    bottom.grid(alpha=0.3)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def divergence_window(steps: np.ndarray, first_step: int, half_width: int | None = None) -> tuple[int, int]:
    """Steps [lo, hi] to zoom on: the first divergence +- max(10, a tenth of the run)."""
    span = int(steps[-1] - steps[0]) if len(steps) else 0
    half = half_width if half_width is not None else max(10, span // 10)
    return first_step - half, first_step + half


def render_zoom(path: Path, candidate, baseline, first_step: int, band=None, tolerance: float | None = None,
                envelope=None, rule: str = "") -> None:
    """Both curves, raw, around the first step where they part; below, the per-step difference.

    `envelope` is the envelope rule's (per-step tolerance on the baseline's steps, label), as on the overlay:
    it is drawn around the reference and the lower panel shows |d| against it on a log scale, the steps
    outside it in red. Without it the lower panel shows (c - b) / b in %, with `tolerance` (relative) dotted.
    `band`: a multi-run baseline's (lower, upper[, label]) on the baseline's steps, or None. `rule`: the rule
    that named the step (the verdict's divergence "by")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import matplotlib.ticker  # noqa: F401  (MaxNLocator below)

    lo, hi = divergence_window(candidate.steps, first_step)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=[3, 1.4],
                                      constrained_layout=True)
    near = np.flatnonzero((baseline.steps >= lo) & (baseline.steps <= hi))
    near = near[_stride(len(near))]
    if band is not None:
        lower, upper = band[0], band[1]
        top.fill_between(baseline.steps[near], np.asarray(lower)[near], np.asarray(upper)[near], color="#57606a",
                         alpha=0.18, label=band[2] if len(band) > 2 else "baseline band")
    if envelope is not None:
        tol = np.asarray(envelope[0], dtype=np.float64)
        top.fill_between(baseline.steps[near], (baseline.loss - tol)[near], (baseline.loss + tol)[near],
                         color="#bf8700", alpha=0.45, linewidth=0, label="envelope tolerance")
    for curve, label, style, colour in ((baseline, "baseline", "--", BASELINE_COLOUR),
                                        (candidate, "candidate", "-", "#0969da")):
        keep = (curve.steps >= lo) & (curve.steps <= hi)
        marked = int(keep.sum()) <= MAX_MARKED_POINTS  # one marker per step while they can be told apart
        top.plot(*for_display(curve.steps[keep], curve.loss[keep]), style + ("o" if marked else ""), color=colour,
                 markersize=3, linewidth=1.2, label=label)
    named = f" ({rule})" if rule else ""
    top.axvline(first_step, color="#cf222e", linewidth=1, label=f"first divergence{named}: step {first_step}")
    top.set_ylabel("Loss")
    top.set_title(f"Around the first divergence: steps {max(lo, int(candidate.steps[0]))} to {hi}")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    paired, ic, ib = np.intersect1d(candidate.steps, baseline.steps, return_indices=True)
    keep = (paired >= lo) & (paired <= hi)
    x, c, b = paired[keep], candidate.loss[ic][keep], baseline.loss[ib][keep]
    if envelope is not None:
        diff = np.abs(c - b)
        tol = np.asarray(envelope[0], dtype=np.float64)[ib][keep]
        with np.errstate(invalid="ignore"):
            outside = ~(diff <= tol)
        shown = np.where(diff > 0, diff, np.nan)  # log scale: exact agreement is drawn as a gap
        if len(x) <= MAX_MARKED_POINTS:
            bottom.bar(x, shown, color=np.where(outside, "#cf222e", "#8c959f"), width=0.8,
                       label="|d| (red: outside the tolerance)")
        else:
            bottom.plot(*for_display(x, shown), color="#8250df", linewidth=0.8, label="|d|")
        bottom.plot(x, tol, color="#bf8700", linewidth=1.4, label="envelope tolerance")
        bottom.set_yscale("log")
        bottom.set_ylabel("|d| (log)")
        bottom.legend(loc="upper left", fontsize="small")
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (c - b) / b * 100
        if len(x) <= MAX_MARKED_POINTS:
            bottom.bar(x, rel, color="#8250df", width=0.8)
        else:  # a bar per step is a matplotlib patch per step: seconds for a long window, and no more legible
            fx, fy = for_display(x, rel)
            bottom.fill_between(fx, 0, np.nan_to_num(fy), color="#8250df", linewidth=0.6)
        if tolerance is not None:
            for sign in (1, -1):
                bottom.axhline(sign * tolerance * 100, color="#cf222e", linewidth=0.8, linestyle=":")
        bottom.set_ylabel("difference, %")
    bottom.axvline(first_step, color="#cf222e", linewidth=1)
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # steps are whole numbers
    bottom.set_xlabel("Iteration")
    bottom.grid(alpha=0.3)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None, table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td{_cell_class(c)}>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell_class(value) -> str:
    """Numbers never wrap ("6.4619e-" / "05"): a cell that holds one is kept on one line."""
    return ' class="num"' if isinstance(value, (int, float)) or _NUMBER.fullmatch(str(value)) else ""


_NUMBER = re.compile(r"[-+]?(\d[\d.]*(e[-+]?\d+)?|1 - \S+)(x)?")


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _fmt3(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _cosine(value) -> str:
    """A cosine near 1 as how far it is from 1 (0.99999998 would print as "1")."""
    if isinstance(value, float) and 0.99 <= value < 1.0:
        return f"1 - {1.0 - value:.2g}"
    return _fmt(value)


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _speed(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and np.isfinite(value) else "not recorded"


def throughput_rows(baseline_ips, candidate_ips, rule: dict | None = None) -> list[list[str]]:
    """Mean samples/s of both sides, their ratio, and whether the throughput rule flags it (a port that is
    correct but 10x slower is news too)."""
    ratio = (f"{candidate_ips / baseline_ips:.3g}x" if all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0
                                                            for v in (baseline_ips, candidate_ips)) else "-")
    flag = ""
    if rule and rule.get("applicable", True):
        low, high = rule["thresholds"]["min_ratio"], rule["thresholds"]["max_ratio"]
        flag = f"within [{low:g}, {high:g}]" if rule["passed"] else f"flagged (informs): outside [{low:g}, {high:g}]"
    return [["mean samples/s", _speed(baseline_ips), _speed(candidate_ips), ratio, flag]]


def tracking_html(record: dict | None, ui_url: str | None = None) -> str:
    """Where the run lives in MLflow, with a link when there is a UI (tracking.ui_url, or a server store)."""
    from pipelines.review import mlflow_ui, run_link, view_link

    if record is None:
        return "<p>No MLflow run: this verdict judged logs given to compare (--candidate / --baseline).</p>"
    run_id = record.get("mlflow_run_id") or ""
    uri = record.get("tracking_uri", "")
    if record.get("run_info_note"):  # run.json missing or of another curve: the run's MLflow id is unknown
        return f"<p>MLflow run unknown: {html.escape(record['run_info_note'])}.</p>"
    if not run_id:
        return "<p>Tracking was disabled for this run (tracking.enabled: false).</p>"
    ui = mlflow_ui(ui_url, uri)
    link = run_link(ui, record.get("mlflow_experiment_id", ""), run_id)
    shown = f'<a href="{html.escape(link)}">{html.escape(run_id)}</a>' if link else html.escape(run_id)
    parts = [f"MLflow run <code id=\"mlflow-run\">{shown}</code>"]
    if record.get("mlflow_parent_run_id"):
        parts.append(f"(child of execution run <code>{html.escape(record['mlflow_parent_run_id'])}</code>)")
    if uri:
        parts.append(f"in <code>{html.escape(uri)}</code>")
    if run_id.startswith("local-"):
        parts.append("; the store was unreachable: the records wait in the spool and get their MLflow id on upload "
                     "(<code>python -m pipelines.tracking sync</code>)")
    elif link:
        view = view_link(ui, record.get("mlflow_experiment_id", ""))
        parts.append(f'&mdash; <a href="{html.escape(link)}">open in MLflow</a>, '
                     f'<a id="mlflow-view" href="{html.escape(view)}">all runs with their verdicts</a>')
    return f"<p>{' '.join(parts)}</p>"


STRIP_PHASES = (("forward", "forward"), ("backward", "backward (outputs)"), ("param_grad", "backward (params)"),
                ("update", "update"))


def render_strip(path: Path, localization: dict) -> bool:
    """Per-entry error / tolerance by depth, one row per phase, at the step localize judged (log scale;
    above the line at 1 an entry leaves the tolerance). False when there is nothing to draw."""
    strip = localization.get("strip") or {}
    rows = [(phase, label) for phase, label in STRIP_PHASES if strip.get(phase, {}).get("ratio")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 1.5 * len(rows) + 0.6), squeeze=False)
    first = localization.get("first") or {}
    for ax, (phase, label) in zip(axes[:, 0], rows):
        ratio = np.array([float(r) for r in strip[phase]["ratio"]], dtype=float)
        shown = np.clip(np.where(np.isfinite(ratio), ratio, 1e6), 1e-4, 1e6)
        x = np.arange(len(shown))
        ax.bar(x, shown, width=1.0, color=np.where(ratio > 1, "#cf222e", "#8c959f"), bottom=1e-4)
        ax.axhline(1.0, color="#1f2328", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1e6)
        ax.set_xlim(-0.5, len(shown) - 0.5)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        if first.get("phase") == phase and first.get("entry") in strip[phase]["names"]:
            i = strip[phase]["names"].index(first["entry"])
            # dark text on a white box, with an arrow: a red label on red bars cannot be read
            ax.annotate(first["entry"], (i, min(shown[i], 1e5)), fontsize=7, color="#1f2328",
                        xytext=(12, -14), textcoords="offset points",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#cf222e", "lw": 0.8},
                        arrowprops={"arrowstyle": "->", "color": "#1f2328", "lw": 0.8})
    axes[-1, 0].set_xlabel("entry, in execution order (modules; parameters for backward (params) and update)")
    step = first.get("step", (localization.get("steps") or ["?"])[-1])
    fig.suptitle(f"relative L2 error / tolerance per entry at step {step} (above 1: outside)", fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return True


def localization_html(localization: dict | None, strip_png: Path | None) -> str:
    """The section that answers "which op?": the first diverging entry, its metrics beside its tolerance."""
    if not localization:
        return "<p id=\"localize\">No localisation: the localize stage has not run for this verdict.</p>"
    message = html.escape(str(localization.get("message", "")))
    first = localization.get("first")
    body = f'<p id="localize"><b>{message}</b></p>'
    if first:
        module = first["module"] or "(model)"
        same = module == first["entry"]  # a module's output: entry and module are one name
        head = ["step", "phase", "module" if same else "entry"] + ([] if same else ["module"])
        row = [first["step"], first["phase"], first["entry"]] + ([] if same else [module])
        row += [first["kind"], _cosine(first["cosine"])] + [_fmt3(first.get(k, float("nan"))) for k in
                                                           ("rel_l2", "bulk_error", "max_abs_error", "max_rel_error",
                                                            "tolerance", "spread")]
        row.append("whole tensors" if first.get("exact") else "sketch")
        body += _table(head + ["kind", "cosine", "rel. L2 error", "bulk error (judges an update)", "max abs error",
                               "max rel error", "tolerance", "envelope spread", "from"], [row], ["bad"],
                       "localize-first")
    body += op_html(localization.get("op"))
    if localization.get("next"):
        body += f"<p>Next: {html.escape(localization['next'])}</p>"
    if strip_png is not None:
        body += _img(strip_png, "per-entry error over tolerance by depth, per phase")
    return body


def op_html(op: dict | None) -> str:
    """The first diverging op inside localize's module (pipelines/kernel.py): the op, where it was called, how its
    call differs from the reference's, its error against the float64 oracle beside its bound, and the repro."""
    if not op:
        return ""
    if op.get("status") != "named":
        return f'<p id="localize-op">Op: {html.escape(str(op.get("message", "")))}</p>'
    head = ["op", "called in", "pass", "differs from the reference's call", "rel. L2 error vs float64",
            "max abs error", "cosine", "bound (C x fp32 error)", "inputs' worst error"]
    row = [op["op"], op["site"], "backward" if op.get("backward") else "forward",
           "; ".join(op.get("arg_diffs") or []) or "nothing but the kernel", _fmt3(op["rel_l2"]),
           _fmt3(op["max_abs_error"]), _cosine(op["cosine"]),
           f"{_fmt3(op['bound'])} ({op['c']:g} x {_fmt3(op['fp32_error'])})", _fmt3(op["input_rel_l2"])]
    body = _table(head, [row], ["bad"], "localize-op")
    if op.get("repro"):
        body += (f'<p id="localize-repro">Repro (torch only; exits 1 where the op leaves the bound): '
                 f'<code>python {html.escape(op["repro"])} --device &lt;cpu|cuda|sdaa&gt;</code></p>')
    return body


def differs(base: str, cand: str) -> bool:
    """An environment field differs when both sides recorded it and they disagree: an unknown is no difference."""
    return bool(base) and bool(cand) and base != cand


def divergence_words(verdict: dict) -> str:
    """What the verdict's first divergence step is: the first step a gating rule finds outside its tolerance
    (pipelines.verdict.first_failing_step), or compare.divergence's fixed tolerance where no gating rule
    judges single steps."""
    by = str(verdict.get("divergence", {}).get("by", ""))
    if by == "compare.divergence":
        d = verdict["divergence"]
        return (f"|d| > max({d['max_relative_error']:g} x |b|, {d['max_abs_error']:g}) for {d['consecutive_steps']} "
                f"steps in a row, compare.divergence: no gating rule judges single steps")
    if by:
        return f"the first step outside the gating {by} rule's tolerance"
    return "the curves' first step beyond tolerance"


def stopped_html(verdict: dict) -> str:
    """The banner's line for a run fail fast stopped (pipelines/failfast.py); '' for a full run."""
    stopped = verdict.get("stopped_early")
    if not stopped:
        return ""
    return (f"<p id=\"stopped-early\"><b>Stopped early at step {html.escape(str(stopped.get('stopped_step')))}</b> "
            f"(fail fast; first step outside: {html.escape(str(stopped.get('failed_step')))}): the curve ends there, "
            f"the verdict was already certain. {html.escape(str(stopped.get('reason', '')))}</p>")


def render_html(path: Path, verdict: dict, environments: list[tuple[str, str, str]], record: dict | None,
                overlay_png: Path, throughput: list[list[str]], zoom_png: Path | None = None,
                band_shown: bool = False, envelope_shown: bool = False, verdict_sha256: str = "",
                ui_url: str | None = None, localization: dict | None = None, strip_png: Path | None = None) -> None:
    """The page an engineer opens after a failed night: verdict and why first, then the evidence.

    `verdict_sha256` (of verdict.json's bytes) goes into the page's head, so the gate can tell a report
    of this verdict from one left by an older one."""
    from pipelines.verdict_file import report_mark

    status = verdict["status"]
    rule_rows = [[name, "gates" if r["gating"] else "informs", "pass" if r["passed"] else "fail",
                  ", ".join(f"{k} = {_fmt(v)}" for k, v in r["numbers"].items()),
                  ", ".join(f"{k} = {_fmt(v)}" for k, v in r["thresholds"].items()), r["summary"]]
                 for name, r in verdict["rules"].items()]
    # a failing informing rule is flagged in its own colour: only the verdict's rules look like the verdict
    rule_classes = ["" if r["passed"] else "bad" if r["gating"] else "inform" for r in verdict["rules"].values()]
    env_rows = [[name, base or "not recorded", cand or "not recorded", "differs" if differs(base, cand) else ""]
                for name, base, cand in environments]
    env_classes = ["diff" if differs(base, cand) else "" for _, base, cand in environments]
    first = verdict.get("first_divergence_step")
    where = divergence_words(verdict)
    numbers = [["compared steps", verdict["compared_steps"]], ["candidate steps", verdict["candidate_steps"]],
               ["baseline steps", verdict["baseline_steps"]],
               ["first divergence step", f"{first} ({where})" if first is not None else f"none ({where})"]]
    numbers += [[k.replace("_", " "), _fmt(v)] for k, v in verdict.get("absolute", {}).items()]
    if first is None:
        zoom = f"<p id=\"zoom-note\">No first divergence ({html.escape(where)}): nothing to zoom on.</p>"
    else:
        zoom = (f"<p id=\"zoom-note\">First divergence at step <b>{html.escape(str(first))}</b>: "
                f"{html.escape(where)}.</p>" + _img(zoom_png, "zoom around the first divergence"))
    band_note = ("The grey band is the seed band: the baseline runs' mean &plusmn; z&sigma; over other seeds "
                 "(other randomness, far wider than numerics; it informs)." if band_shown else
                 "The baseline is a single run: no seed band to draw.")
    if envelope_shown:
        band_note += (" The amber band is the envelope rule's tolerance around the reference (k &times; the "
                      "numerics envelope + a relative floor). Bottom: |candidate - baseline| per step (purple) "
                      "against that tolerance (amber), on a log scale: a step above the amber line is outside.")
    else:
        band_note += (" Bottom: the per-step difference (candidate - baseline) / baseline in %, with the strict "
                      "rule's tolerance dotted.")
    where = localization_html(localization, strip_png)
    failing = status != "pass" or (localization or {}).get("status") == "diverged"
    where_top = f"<h2>Where it parts: layer fingerprints</h2>{where}" if failing else ""
    where_bottom = "" if failing else f"<h2>Layer fingerprints</h2>{where}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{report_mark(verdict_sha256) if verdict_sha256 else ''}<title>CaiT acceptance: {html.escape(verdict['profile'])} {status}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1f2328; padding: 0 1rem; }}
.banner {{ padding: 1rem 1.5rem; border-radius: 6px; color: white; background: {STATUS_COLOURS.get(status, '#555')}; }}
.banner h1 {{ margin: 0; font-size: 1.6rem; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; width: 100%; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; font-size: 0.9rem; vertical-align: top; }}
th {{ background: #f6f8fa; }}
tr.bad td {{ background: #ffebe9; }} tr.diff td {{ background: #fff8c5; font-weight: 600; }}
tr.inform td {{ background: #eaeef2; font-style: italic; }} td.num {{ white-space: nowrap; }}
pre {{ background: #f6f8fa; padding: 0.8rem; overflow-x: auto; }}
img {{ max-width: 100%; }}
</style></head><body>
<div class="banner" id="verdict"><h1>Verdict: {status.upper()}</h1>
{stopped_html(verdict)}<p>profile <b>{html.escape(verdict['profile'])}</b>, baseline <code>{html.escape(str(verdict['baseline']))}</code>
recorded on {html.escape(verdict.get('baseline_device', ''))}</p></div>
{where_top}
<h2>Why</h2><ul id="reasons">{''.join(f'<li>{html.escape(r)}</li>' for r in verdict['reasons'])}</ul>
{('<h2>Notes</h2><ul>' + ''.join(f'<li>{html.escape(n)}</li>' for n in verdict['notes']) + '</ul>') if verdict.get('notes') else ''}
<h2>Loss curves and difference</h2>
<p>Top: candidate (solid blue) and baseline (dashed orange, drawn on top; the legend names its run), raw
and smoothed. {band_note}</p>
{_img(overlay_png, "loss overlay and difference panel")}
<h2>First divergence</h2>{zoom}
<h2>Rules</h2>{_table(['rule', 'role', 'result', 'numbers', 'thresholds', 'summary'], rule_rows, rule_classes, 'rules')}
<h2>ModelZoo output</h2><pre>{html.escape(chr(10).join(verdict.get('modelzoo_lines', [])))}</pre>
<h2>Numbers</h2>{_table(['quantity', 'value'], numbers, table_id='numbers')}
<h2>Throughput</h2>{_table(['', 'baseline', 'candidate', 'candidate / baseline', 'throughput rule'], throughput,
                             ['inform' if row[-1].startswith('flagged') else '' for row in throughput], 'throughput')}
<h2>Environments</h2><p>Rows that differ are highlighted.</p>
{_table(['', 'baseline', 'candidate', ''], env_rows, env_classes, 'environments')}
{where_bottom}
<h2>Tracking</h2>{tracking_html(record, ui_url)}
</body></html>
"""
    atomic_write_text(path, page)


def render_junit(path: Path, verdict: dict, device: str = "") -> None:
    """One test case per rule; an inconclusive verdict makes each an error, a failed gating rule a failure.
    The device goes into the names, so a night's files from several runners stay apart in CI."""
    status = verdict["status"]
    where = f"{verdict['profile']}.{device}" if device else verdict["profile"]
    suite = ET.Element("testsuite", name=f"cait-acceptance.{where}")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for name, rule in verdict["rules"].items() or {"verdict": None}.items():
        case = ET.SubElement(suite, "testcase", classname=f"acceptance.{where}", name=name)
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
    with atomic_output(path) as tmp:
        ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)


def write_plot_table(path: Path, candidate, baseline) -> None:
    """step, candidate, baseline: one row per step either curve has (empty where one lacks it), for `dvc plots`.
    Written by pyarrow's CSV writer (shortest text that reads back to the same float), atomically."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    steps = candidate.steps  # both strictly increasing (pipelines.align.check_steps): merge, do not hash
    if not np.array_equal(steps, baseline.steps):
        steps = np.sort(np.concatenate([candidate.steps, baseline.steps]))
        steps = steps[np.concatenate([[True], np.diff(steps) != 0])] if len(steps) else steps
    columns = {"step": pa.array(steps)}
    for name, curve in (("candidate", candidate), ("baseline", baseline)):
        values, missing = np.zeros(len(steps)), np.ones(len(steps), dtype=bool)
        at = np.searchsorted(steps, curve.steps)
        values[at], missing[at] = curve.loss, False
        columns[name] = pa.array(values, mask=missing)
    with atomic_output(path) as tmp, pa.OSFile(str(tmp), "wb") as f:
        f.write(b"step,candidate,baseline\n")
        pcsv.write_csv(pa.table(columns), f, write_options=pcsv.WriteOptions(include_header=False,
                                                                             quoting_style="none"))


CUDA_ONLY = ("cuda",)  # beside a CPU or SDAA run, the "cuda 13.0" of a CPU-capable torch build misleads


def relevant(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The environment rows that say something about these two runs: the CUDA rows only when a side ran on CUDA."""
    devices = {base for name, base, _ in rows if name == "device"} | {cand for name, _, cand in rows if name == "device"}
    return [row for row in rows if row[0] not in CUDA_ONLY or "cuda" in devices]


def divergence_tolerance(verdict: dict) -> float | None:
    """The relative tolerance the first divergence was found with (else the strict rule's)."""
    found = verdict.get("divergence", {}).get("max_relative_error")
    if found is not None:
        return found
    return verdict.get("rules", {}).get("strict", {}).get("thresholds", {}).get("max_mean_abs_relative_error")


def _source_rows(verdict: dict) -> list[tuple[str, str, str]]:
    """(field, baseline, candidate) rows of what compare read from logs: file, format, points, lines."""
    sources = verdict.get("sources", {})
    base, cand = sources.get("baseline", {}), sources.get("candidate", {})
    rows = []
    for key, label in (("source", "read from"), ("format", "format"), ("metric", "value read"),
                       ("points", "points"), ("lines", "lines")):
        if key in base or key in cand:
            show = (lambda v: "-" if v is None else f"{v[0]}-{v[1]}" if key == "lines" else str(v))
            rows.append((label, show(base.get(key)), show(cand.get(key))))
    return rows


def write_report(out_dir: Path, verdict: dict, candidate, reference, *, baseline=None, record: dict | None = None,
                 rules=None, verdict_sha256: str = "", ui_url: str | None = None,
                 localization: dict | None = None) -> dict[str, Path]:
    """Overlay, zoom (when the curves part), HTML page, JUnit XML and plot table of a verdict, into out_dir.

    The one path for the chain (a run record and a stored baseline) and for logs compared by hand (either may
    be None: the page then shows what was read from each file). `reference` is the baseline curve the
    verdict was computed against; `baseline` the stored Baseline it came from, if any; `rules` the compare
    section's rule settings (the seed band's z and the envelope's k and floor drawn on the overlay)."""
    from pipelines.baselines import environment_table
    from pipelines.envelope import tolerance
    from pipelines.layout import HTML, JUNIT, OVERLAY, PLOTS, STRIP, ZOOM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = (record or {}).get("environment", {})
    cand_label = (f"candidate: {env['device']} ({env['device_name']})" if env
                  else f"candidate: {Path(str(verdict.get('candidate', 'candidate'))).name}")
    if baseline is not None:
        seed = (record or {}).get("curve_params", {}).get("train", {}).get("seed", baseline.provenance.get("seed"))
        which = "run of seed " + str(seed if seed in baseline.seeds else baseline.provenance.get("seed"))
        base_label = f"baseline: {baseline.provenance['device']} ({baseline.provenance['device_name']}), {which}"
    else:
        base_label = f"baseline: {Path(str(verdict.get('baseline', 'baseline'))).name}"
    band = envelope = None
    if baseline is not None and rules is not None:
        limits = baseline.band(rules.band.z, rules.band.min_halfwidth_relative)
        if limits and len(limits[0]) == len(reference.steps):
            band = (*limits, f"seed band: mean ± {rules.band.z:g}·σ of {len(baseline.runs)} seeds "
                             f"(different randomness, informs)")
        width = baseline.envelope() if hasattr(baseline, "envelope") else None
        if width is not None and len(width) == len(reference.steps):
            k, floor = rules.envelope.k, rules.envelope.floor_relative
            envelope = (tolerance(reference.loss, width, k, floor),
                        f"envelope: ± ({k:g}·env + {floor:g}·|ref|), {len(baseline.envelope_runs)} numerics variants")
    paths = {"overlay": out_dir / OVERLAY, "html": out_dir / HTML, "junit": out_dir / JUNIT, "plots": out_dir / PLOTS}
    render_overlay(paths["overlay"], candidate, reference, verdict, (cand_label, base_label), band=band,
                   envelope=envelope)
    first = verdict.get("first_divergence_step")
    zoom = None
    if first is not None:
        zoom = paths["zoom"] = out_dir / ZOOM
        render_zoom(zoom, candidate, reference, int(first), band, divergence_tolerance(verdict), envelope,
                    str(verdict.get("divergence", {}).get("by", "")))
    else:
        (out_dir / ZOOM).unlink(missing_ok=True)
    environments = relevant(environment_table(baseline, record)) if baseline is not None and record else []
    environments += _source_rows(verdict)
    from pipelines.review import timing_rule, with_timing

    # the page shows the informing throughput rule too (measured, so not in verdict.json); JUnit, a DVC
    # output, only verdict.json's rules
    shown = with_timing(verdict, timing_rule(verdict, record, baseline, rules))
    throughput = throughput_rows(baseline.provenance.get("mean_samples_per_s") if baseline is not None else None,
                                 (record or {}).get("mean_samples_per_s"), shown.get("rules", {}).get("throughput"))
    strip = None
    if localization and render_strip(out_dir / STRIP, localization):
        strip = paths["strip"] = out_dir / STRIP
    else:
        (out_dir / STRIP).unlink(missing_ok=True)
    render_html(paths["html"], shown, environments, record, paths["overlay"], throughput, zoom_png=zoom,
                band_shown=band is not None, envelope_shown=envelope is not None, verdict_sha256=verdict_sha256,
                ui_url=ui_url, localization=localization, strip_png=strip)
    render_junit(paths["junit"], verdict, env.get("device", "") if env else "logs")
    write_plot_table(paths["plots"], candidate, reference)
    return paths
