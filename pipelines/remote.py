"""Baselines where every runner can reach them: an export of baselines/ (JSON + fingerprints) and the pinned
subset's manifest, tracked by DVC and pushed to the DVC remote `baselines` (.dvc/config; a team points it at
theirs with `dvc remote modify --local baselines url s3://...`, credentials from the environment).

  python -m pipelines.remote push     # `make baselines-push`: export, `dvc add`, `dvc push`; commit the .dvc file
  python -m pipelines.remote pull     # a runner: `dvc pull` the export this commit pins, then `verify`
  python -m pipelines.remote verify   # the checkout's baselines against the pulled export

baselines/ stays in git (the chain, its tests and a fresh clone's offline `make repro` read it there); the export
is a DVC-tracked copy in .dvc-export/baselines whose hash .dvc-export/baselines.dvc pins. `verify` copies a file
the checkout lacks (a runner without baselines gets the remote's) and refuses, naming both SHA-256 hashes, a file
that differs from the remote's (edited, or stale against the commit's export): exit 2, nothing changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cait.errors import BaselineError, ConfigError
from cait.files import replace_folder
from pipelines.provenance import file_sha256

REMOTE = "baselines"
EXPORT = Path(".dvc-export/baselines")
DVC_FILE = EXPORT.parent / (EXPORT.name + ".dvc")
SOURCES = (Path("baselines"), Path("data/prepared/manifest.json"))  # the manifest only where prepared


def _dvc(*args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).parent / "dvc"
    done = subprocess.run([str(dvc) if dvc.exists() else "dvc", *args], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
        raise ConfigError(f"dvc {' '.join(args)} failed: {last[0][:300]}; check the remote "
                          f"(dvc remote list; dvc remote modify --local {REMOTE} url <url>)")
    return done


def remote_url() -> str:
    for line in _dvc("remote", "list").stdout.splitlines():
        name, _, url = line.strip().partition("\t")
        if name.strip() == REMOTE:
            return url.strip()
    raise ConfigError(f"no DVC remote {REMOTE!r} in .dvc/config; add it (dvc remote add {REMOTE} <url>)")


def export() -> Path:
    """Copy what runners need into EXPORT (replaced whole)."""
    with tempfile.TemporaryDirectory(dir=EXPORT.parent if EXPORT.parent.exists() else None) as tmp:
        built = Path(tmp) / "export"
        for source in SOURCES:
            if source.is_dir():
                shutil.copytree(source, built / source, ignore=shutil.ignore_patterns("*.tmp*", ".gitignore"))
            elif source.is_file():
                (built / source).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, built / source)
        if not (built / SOURCES[0]).is_dir():
            raise BaselineError(f"{SOURCES[0]}/: no baselines to push; record one first (make baseline)")
        EXPORT.parent.mkdir(parents=True, exist_ok=True)
        replace_folder(built, EXPORT)
    return EXPORT


def push() -> str:
    export()
    _dvc("add", "-q", str(EXPORT))
    _dvc("push", "-q", "-r", REMOTE, str(DVC_FILE))
    return f"remote: pushed {EXPORT} to the DVC remote {REMOTE!r} ({remote_url()}); commit {DVC_FILE}"


def differences(root: Path = Path(".")) -> tuple[list[Path], list[str]]:
    """(files the checkout lacks, one line per file that differs) between EXPORT and the checkout at `root`."""
    if not EXPORT.is_dir():
        raise BaselineError(f"{EXPORT}: not pulled; run `python -m pipelines.remote pull` "
                            f"(dvc pull -r {REMOTE} {DVC_FILE})")
    missing, differ = [], []
    for exported in sorted(p for p in EXPORT.rglob("*") if p.is_file()):
        rel = exported.relative_to(EXPORT)
        here = root / rel
        if not here.is_file():
            missing.append(rel)
            continue
        theirs, ours = file_sha256(exported), file_sha256(here)
        if theirs != ours:
            differ.append(f"{rel}: sha256 {ours} here, {theirs} in the DVC remote {REMOTE!r}")
    return missing, differ


def verify(install: bool = True) -> str:
    missing, differ = differences()
    if differ:
        raise BaselineError(f"this runner's baseline differs from the remote's ({remote_url()}; {DVC_FILE}): "
                            + "; ".join(differ) + ". Restore it (git checkout -- baselines/) or, if the remote "
                            "is the stale side, record and push a new one (make baselines-push)")
    if missing and not install:
        raise BaselineError(f"{', '.join(map(str, missing))}: not in this checkout; run `python -m pipelines.remote "
                            f"pull` to install the remote's")
    for rel in missing:
        rel.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(EXPORT / rel, rel)
    got = f"installed {len(missing)} file(s) from the remote; " if missing else ""
    return f"remote: {got}the baselines here match the DVC remote {REMOTE!r} ({DVC_FILE})"


def pull() -> str:
    if not DVC_FILE.is_file():
        raise ConfigError(f"{DVC_FILE}: missing; nothing pins the remote's baselines (make baselines-push, "
                          f"then commit it)")
    _dvc("pull", "-q", "-r", REMOTE, str(DVC_FILE))
    return verify(install=True)


def main(argv=None) -> int:
    from pipelines import cli

    p = cli.parser("baselines in a DVC remote: push them, pull them on a runner, verify the runner's copy")
    p.add_argument("command", choices=["push", "pull", "verify"])
    args = p.parse_args(argv)
    print({"push": push, "pull": pull, "verify": verify}[args.command]())
    return 0


if __name__ == "__main__":
    from pipelines import cli

    sys.exit(cli.run(main))
