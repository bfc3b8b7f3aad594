"""Where each stage reads and writes; dvc.yaml declares the same paths."""

from pathlib import Path

PREPARED_DIR = Path("data/prepared")  # prepare -> train: manifest.json (+ synthetic images)
SHARDS_DIR = PREPARED_DIR / "shards"  # pre-decoded uint8 pixels of the manifest (data.shards)
DATASET = "dataset.json"  # the full listing the pinned manifest.json was chosen from
SCAN_REPORT = "scan.json"  # what the ImageNet integrity scan found and where
SCAN_CACHE_DIR = Path("data/scan-cache")  # per-file scan results kept between prepare runs (not a DVC output)
REPORTS_DIR = Path("reports")


def run_dir(profile: str) -> Path:
    """reports/<profile>/: curve.csv, train.json, run.json, timing.csv (train); verdict.json (compare);
    overlay.png, zoom.png, report.html, junit.xml, plots.csv (report)."""
    return REPORTS_DIR / profile


CURVE = "curve.csv"
PARTIAL_CURVE = "curve.partial.csv"  # the steps of a run that failed or was stopped (not a DVC output)
RECORD = "train.json"
FINGERPRINTS = "fingerprints.npz"  # train: layer fingerprints at train.fingerprints.steps (cait/fingerprints.py)
LOCALIZE = "localize.json"  # localize: the first module/phase whose fingerprints leave the tolerance
STRIP = "localize.png"  # report: per-module error / tolerance by depth, one row per phase
RUN_INFO = "run.json"  # train: MLflow ids, date, wall time, throughput, git commit, host (volatile: not a DVC output)
TIMING = "timing.csv"  # train: step, samples_per_s, elapsed_s (volatile: not a DVC output)
CHECKPOINTS = "checkpoints"  # train: last.pt (periodic, SIGTERM), best.pt (full training)
VERDICT = "verdict.json"
METRICS = "metrics.json"  # compare: the flat verdict numbers `dvc metrics show` / `dvc exp show` list
OVERLAY = "overlay.png"
HTML = "report.html"
JUNIT = "junit.xml"
ZOOM = "zoom.png"  # only when the verdict names a first divergence step
PLOTS = "plots.csv"  # step, candidate, baseline: the loss overlay `dvc plots` draws
EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by DVC for every stage of `dvc exp run`: the experiment's name
