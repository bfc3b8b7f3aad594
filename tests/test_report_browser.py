"""The HTML report as a reader sees it: rendered by headless Chromium (Debian's chromium package).

A probe script added to a copy of the page reads what the browser actually rendered (innerText holds
only visible text; images report their decoded size; the highlighted rows their computed colour) and
writes it into the DOM, which Chromium dumps. A screenshot of the real page is kept under
test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, write_params
from fake_runs import reference_loss, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"
RUN_ID = "5f0c1d2e3a4b4c5d9e8f7a6b5c4d3e2f"

PROBE = """<script>
window.addEventListener('load', () => {
  const rowColour = (tableId, name) => {
    for (const tr of document.querySelectorAll('#' + tableId + ' tbody tr')) {
      if (tr.cells[0].innerText.trim() === name) return getComputedStyle(tr.cells[0]).backgroundColor;
    }
    return null;
  };
  const out = {
    text: document.body.innerText,
    images: [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.getBoundingClientRect().height})),
    banner: getComputedStyle(document.getElementById('verdict')).backgroundColor,
    device_row: rowColour('environments', 'device'),
    python_row: rowColour('environments', 'python'),
    strict_row: rowColour('rules', 'strict'),
    envelope_row: rowColour('rules', 'envelope'),
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def run_stage(name: str, project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipelines.stages.{name}"], cwd=project,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)")
def test_report_renders_in_chromium(project, tmp_path):
    write_params(project, {"tracking": {"enabled": False}})
    # a port that drifts away from the baseline from step 30 on
    baseline = reference_loss(60)
    candidate = baseline.copy()
    candidate[30:] *= 1.0 + np.linspace(0.0, 0.08, 30)
    out = write_run(project, candidate, run_id=RUN_ID, baseline_loss=baseline)
    assert run_stage("compare", project).returncode == 0
    verdict_path = out / "verdict.json"
    verdict = json.loads(verdict_path.read_text())
    # the first divergence is where the gating envelope rule first finds the candidate outside its tolerance
    assert verdict["first_divergence_step"] == verdict["rules"]["envelope"]["numbers"]["first_outside_step"] >= 30
    done = run_stage("report", project)
    assert done.returncode == 0, done.stderr
    page = out / "report.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html), "the report must load nothing from the network"

    probe_page = out / "probe.html"
    probe_page.write_text(html.replace("</body>", PROBE + "</body>"))
    dumped = chromium(["--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri()], tmp_path / "chrome1")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dumped.stdout, re.S)
    assert found, f"chromium rendered no probe: {dumped.stderr[-2000:]}"
    seen = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
                      .replace("&amp;", "&"))
    text = seen["text"]

    assert "Verdict: FAIL" in text
    assert seen["banner"] == "rgb(207, 34, 46)"  # the fail colour, not the pass one
    # every rule with its numbers and thresholds; the failed gating rule highlighted
    rules = verdict["rules"]
    for name, rule in rules.items():
        assert name in text
        for key, value in rule["numbers"].items():
            assert f"{key} = {value:.6g}" in text
    assert "max_mean_abs_relative_error = 0.02" in text
    assert seen["envelope_row"] == "rgb(255, 235, 233)"  # the failing gating rule: the verdict's colour
    assert seen["strict_row"] == "rgb(234, 238, 242)"  # a failing informing rule: flagged in its own
    # figures: the overlay with its difference panel, and the zoom around step 30, decoded and shown
    images = {i["alt"]: i for i in seen["images"]}
    assert set(images) == {"loss overlay and difference panel", "zoom around the first divergence"}
    assert all(i["w"] > 500 and i["h"] > 200 for i in images.values()), images
    assert f"First divergence at step {verdict['first_divergence_step']}: the first step outside the gating " \
        "envelope rule's tolerance" in text
    # environments: the device differs (highlighted), the python version does not
    assert "NVIDIA A100-SXM4-40GB" in text and "Tecorigin T100" in text
    assert seen["device_row"] == "rgb(255, 248, 197)"
    assert seen["python_row"] == "rgba(0, 0, 0, 0)"
    # throughput of both sides and the MLflow run it came from
    assert re.search(r"mean samples/s\s+400\.0\s+210\.0\s+0\.525x\s+flagged \(informs\): outside \[0\.8, 100\]", text), text
    assert f"MLflow run {RUN_ID}" in text

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    taken = chromium(["--window-size=1200,3600", f"--screenshot={shot}", page.as_uri()], tmp_path / "chrome2")
    assert shot.is_file() and shot.stat().st_size > 50_000, taken.stderr[-2000:]
    shutil.copy2(page, ARTIFACTS / "report.html")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)")
def test_dvc_plots_overlay_renders_offline(project, tmp_path):
    """`dvc plots show` through the offline template: the vega chart draws with no network at all."""
    write_params(project, {"tracking": {"enabled": False}})
    baseline = reference_loss(60)
    write_run(project, baseline * 1.01, baseline_loss=baseline)
    for stage in ("compare", "report"):
        done = run_stage(stage, project)
        assert done.returncode == 0, done.stderr
    table = (project / "reports" / "default" / "plots.csv").read_text().splitlines()
    assert table[0] == "step,candidate,baseline" and len(table) == 61

    done = run_stage("plots", project)
    assert done.returncode == 0, done.stderr
    out = project / "reports" / "plots"
    page = (out / "index.html").read_text()
    assert not re.search(r"""<script[^>]+src=["']https?://""", page), "the plots page must not load scripts"
    for name in ("loss_overlay.svg", "loss_overlay.png"):
        assert (out / name).stat().st_size > 10_000
    svg = (out / "loss_overlay.svg").read_text()
    assert "candidate" in svg and "baseline" in svg and ">step<" in svg

    # --proxy-server to a closed port: any attempt to reach the network fails
    dumped = chromium(["--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000", "--dump-dom",
                       (out / "index.html").as_uri()], tmp_path / "chrome3")
    assert 'class="marks"' in dumped.stdout, dumped.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy2(out / "loss_overlay.png", ARTIFACTS / "dvc_loss_overlay.png")


def orange_pixels(png: Path) -> int:
    """Pixels of the baseline's colour (pipelines.report.BASELINE_COLOUR, antialiasing allowed) in a PNG."""
    from PIL import Image

    from pipelines.report import BASELINE_COLOUR

    target = np.array([int(BASELINE_COLOUR[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int32)
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int32)
    return int(np.sum(np.abs(pixels - target).sum(axis=2) < 60))


def pass_report(tmp_path, monkeypatch) -> dict:
    """On a pass the two curves coincide: the baseline, drawn last in its own colour, must still be seen; the
    seed band of a wide multi-run baseline would reach below zero and is clamped there."""
    import matplotlib.axes

    from pipelines.baselines import Baseline, BaselineRun
    from pipelines.curves import Curve
    from pipelines.params import Params
    from pipelines.report import write_report
    from pipelines.verdict import decide
    from rule_settings import rule_settings

    steps = np.arange(60)
    reference = reference_loss(60)
    runs = [BaselineRun(0, reference), BaselineRun(1, reference * 0.2), BaselineRun(2, reference * 1.8)]
    prov = {"device": "cuda", "device_name": "NVIDIA A100", "seed": 0, "mean_samples_per_s": 400.0}
    baseline = Baseline("default", "cait_XXS24_224", steps, reference, prov, runs=runs)
    stats = baseline.stats()
    verdict = decide(steps, reference, steps, reference, gate=["modelzoo"], inform=["band"], min_steps=10,
                     band_stats={"mean": stats["mean"], "std": stats["std"], "runs": 3}, **rule_settings()).to_dict()
    verdict.update(profile="default", baseline="baselines/default/baseline.json", candidate="curve.csv")
    assert verdict["status"] == "pass"

    lower_edges = []
    original = matplotlib.axes.Axes.fill_between

    def recording(self, x, y1, *args, **kwargs):
        lower_edges.append(np.asarray(y1, dtype=float))
        return original(self, x, y1, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", recording)
    paths = write_report(tmp_path, verdict, Curve(steps, reference), Curve(steps, reference), baseline=baseline,
                         rules=Params().compare.rules)
    assert (stats["mean"] - 3 * stats["std"]).min() < 0  # the unclamped band would go below zero
    assert lower_edges and min(edge.min() for edge in lower_edges) >= 0.0
    assert orange_pixels(paths["overlay"]) > 300  # the dashed baseline is visible on top of the candidate
    assert "seed band" in paths["html"].read_text()
    return paths


def test_a_pass_report_shows_the_baseline_above_the_candidate_and_no_band_below_zero(tmp_path, monkeypatch):
    pass_report(tmp_path, monkeypatch)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)")
def test_the_baseline_line_is_visible_in_the_pass_report_in_chromium(tmp_path, monkeypatch):
    paths = pass_report(tmp_path, monkeypatch)
    shot = tmp_path / "pass.png"
    chromium([f"--screenshot={shot}", "--window-size=1200,1400", paths["html"].as_uri()], tmp_path / "profile")
    assert orange_pixels(shot) > 100, "the baseline line is not visible in the rendered report"


def table_rows(page: str, table_id: str) -> list[list[str]]:
    """The cells of each body row of the table with this id, as text."""
    import html as html_lib

    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [[html_lib.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_the_failing_report_of_a_zoo_bug_tells_one_story(project, monkeypatch):
    """A zoo bug's real curve (GELU with the tanh approximation, tests/data) against the default baseline's reference:
    the verdict, the zoom, the summary, the Numbers table and metrics.json all name the step where the failing
    gating rule first finds the candidate outside its tolerance; an environment field one side did not record is
    no difference."""
    import pipelines.report
    from pipelines import cli
    from pipelines.baselines import load_baseline
    from pipelines.stages import compare, report

    write_params(project, {"tracking": {"enabled": False}})
    rows = [line.split(",") for line in (REPO / "tests/data/gelu_tanh_loss.csv").read_text().splitlines()
            if line and not line.startswith(("#", "step"))]
    loss = np.array([float(v) for _, v in rows])
    reference = load_baseline(REPO / "baselines/default/baseline.json").loss
    out = write_run(project, loss, baseline_loss=reference[:len(loss)])
    record = json.loads((out / "train.json").read_text())
    record["environment"].update(cpu="", driver="")  # not recorded on the candidate's side
    (out / "train.json").write_text(json.dumps(record))
    zoomed = []
    real_zoom = pipelines.report.render_zoom
    monkeypatch.setattr(pipelines.report, "render_zoom", lambda path, c, b, first, *a, **k: (
        zoomed.append(first), real_zoom(path, c, b, first, *a, **k)))
    assert cli.run(compare.main, ["-q"]) == 0 and cli.run(report.main, ["-q"]) == 0

    verdict = json.loads((out / "verdict.json").read_text())
    failing = [n for n, r in verdict["rules"].items() if r["gating"] and not r["passed"]]
    assert verdict["status"] == "fail" and "envelope" in failing
    step = verdict["rules"]["envelope"]["numbers"]["first_outside_step"]
    assert step >= 0 and verdict["first_divergence_step"] == step and verdict["divergence"]["by"] == "envelope"
    assert f"first divergence at step {step}: the first step outside the gating envelope rule's tolerance" \
        in verdict["reasons"]
    assert not [r for r in verdict["reasons"] if "never part" in r or "compare.divergence" in r]
    assert zoomed == [step] and (out / "zoom.png").stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert f"First divergence at step <b>{step}</b>: the first step outside the gating envelope rule" in page
    assert "nothing to zoom on" not in page and 'alt="zoom around the first divergence"' in page
    assert f"leaves 4 x envelope + 1e-06 x |reference| at step {step} " in page  # the rule's own summary
    numbers = dict(table_rows(page, "numbers"))
    assert numbers["first divergence step"].split()[0] == str(step)
    assert json.loads((out / "metrics.json").read_text())["first_step"] == step
    # the bottom panel is described as what it draws: |d| against the envelope on a log scale
    assert "|candidate - baseline| per step (purple) against that tolerance (amber), on a log scale" in page
    environments = table_rows(page, "environments")
    unknown = [row for row in environments if "not recorded" in row[1:3]]
    assert "cpu model" in [row[0] for row in unknown]
    assert all(row[3] == "" for row in unknown), unknown  # an unknown is no difference
    assert any(row[3] == "differs" for row in environments)  # a real difference (the device) still is
