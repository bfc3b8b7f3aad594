"""Where each stage reads and writes; dvc.yaml declares the same paths."""

from pathlib import Path

PREPARED_DIR = Path("data/prepared")  # prepare -> train: manifest.json (+ synthetic images)
REPORTS_DIR = Path("reports")


def run_dir(profile: str) -> Path:
    """reports/<profile>/: curve.csv, train.json (train); verdict.json (compare); overlay.png,
    report.html, junit.xml (report)."""
    return REPORTS_DIR / profile


CURVE = "curve.csv"
RECORD = "train.json"
CHECKPOINTS = "checkpoints"  # train: last.pt (periodic, SIGTERM), best.pt (full training)
VERDICT = "verdict.json"
OVERLAY = "overlay.png"
HTML = "report.html"
JUNIT = "junit.xml"
