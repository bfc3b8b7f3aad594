"""The production tracking layout, run by the project: MLflow's tracking server on PostgreSQL with a file
artifact store, and a night of many device jobs reporting into it.

  python -m pipelines.fleet server [--dir .mlflow-server] [--port 5000]   # `make mlflow-server`; Ctrl-C stops it
  python -m pipelines.fleet night --jobs 16 --kill-at 0.5 --json night.json  # a night under load (see below)

`server` starts PostgreSQL (the Debian `postgresql` package's binaries: /usr/lib/postgresql/*/bin, or
$CAIT_PG_BIN) listening on 127.0.0.1 and a unix socket in its data folder, and `mlflow server` on
127.0.0.1 with `--artifacts-destination <dir>/artifacts` (artifacts are proxied: runners need no share).
PostgreSQL refuses to run as root: as root it runs as the `postgres` user (its data under that user's
home), else as the current user. The database password is drawn afresh at every start (or taken from
$CAIT_PG_PASSWORD) and handed to the MLflow server in its environment only (PGPASSWORD; the backend URI
in MLFLOW_BACKEND_STORE_URI carries no password): it is never written to a file, a log or a command line.

`night` starts such a server in a temp folder and N device jobs as separate processes under one
execution id (`CAIT_EXECUTION_ID`), kills the MLflow server (SIGKILL) part-way and starts it again.
Each job replays a recorded loss curve of the default profile through the project's real tracking path
(RunLogger.log_step, the spool, pipelines/review.py log_review with the real verdict of
pipelines/stages/compare.py judge, the artifacts, finish): the baseline's own seed run (pass) or the
curve of a zoo bug (tests/data/gelu_tanh_loss.csv, trained with cait/portbugs.py gelu_tanh: fail).
Replaying keeps 16 jobs within a test's minutes on 2 cores; what is tested is the tracking, not training.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cait.errors import ConfigError, TrackingError
from cait.files import atomic_write_text

PG_USER = "cait"  # the database role the MLflow server connects as
PG_DB = "mlflow"
PG_OS_USER = "postgres"  # who runs PostgreSQL when we are root
PASSWORD_ENV = "CAIT_PG_PASSWORD"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: $CAIT_PG_BIN, then PATH, then the newest /usr/lib/postgresql/<v>/bin."""
    folders = [os.environ["CAIT_PG_BIN"]] if os.environ.get("CAIT_PG_BIN") else []
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else 0, reverse=True)
    for folder in folders:
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(f"PostgreSQL's {name} not found (looked in $CAIT_PG_BIN, /usr/lib/postgresql/*/bin, PATH); "
                      f"install the server (apt-get install postgresql, as `make test-tools` does) or set CAIT_PG_BIN")


def _as_root() -> bool:
    return os.geteuid() == 0


def _run_as() -> list[str]:
    """The prefix that runs a PostgreSQL binary as a non-root user."""
    if not _as_root():
        return []
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise ConfigError(f"PostgreSQL refuses to run as root and there is no {PG_OS_USER!r} user; install the "
                          f"postgresql package (it makes one) or run as a non-root user") from None
    return ["runuser", "-u", PG_OS_USER, "--"]


def default_pg_data(folder: Path) -> Path:
    """Where PostgreSQL keeps the data of the server in `folder`: folder/postgres, or as root the postgres
    user's home (a checkout under /root is not readable by that user)."""
    if not _as_root():
        return folder / "postgres"
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return Path(pwd.getpwnam(PG_OS_USER).pw_dir) / f"cait-{digest}"


def _stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait_s: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@dataclass
class Postgres:
    """A PostgreSQL server in `data` on 127.0.0.1:`port` (and a unix socket in `data`), database `mlflow`."""

    data: Path
    port: int = 0
    password: str = field(default="", repr=False)
    log: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> None:
        self.port = self.port or free_port()
        self.password = os.environ.get(PASSWORD_ENV) or secrets.token_urlsafe(24)
        prefix = _run_as()
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self.data.mkdir(parents=True, exist_ok=True)
            if prefix:
                shutil.chown(self.data, PG_OS_USER, PG_OS_USER)
            os.chmod(self.data, 0o700)
            # the unix socket (in the 0700 data folder: only its owner and root reach it) trusts its user; TCP
            # on loopback asks for the password
            subprocess.run([*prefix, pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER, "-E", "UTF8",
                            "--auth-local=trust", "--auth-host=scram-sha-256"],
                           check=True, capture_output=True, text=True)
        log = (self.log or self.data.parent / "postgres.log")
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [*prefix, pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.data),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_permissions=0700",
                 "-c", "max_connections=200", "-c", "fsync=on"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._admin(fresh)
                return
            except Exception as exc:  # not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-1500:] if log.exists() else ""
                    self.stop()
                    raise TrackingError(f"PostgreSQL in {self.data} did not start ({str(exc).strip()[:200]}); "
                                        f"its log {log}: {tail[-400:]}") from None
                time.sleep(0.3)

    def _admin(self, fresh: bool) -> None:
        """Over the unix socket: set this start's password; create the database the first time."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=str(self.data), port=self.port, user=PG_USER, dbname="postgres",
                             autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(PG_USER),
                                                                    sql.Literal(self.password)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DB)))

    @property
    def backend_uri(self) -> str:
        """SQLAlchemy's URI of the database, without the password (it goes in PGPASSWORD)."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{PG_DB}"

    def stop(self) -> None:
        _stop_group(self.proc, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        self.proc = None


@dataclass
class MlflowServer:
    """`mlflow server` on 127.0.0.1:`port`, on the PostgreSQL `db`, artifacts under `artifacts` (proxied)."""

    db: Postgres
    artifacts: Path
    port: int = 0
    workers: int = 2
    log: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300) -> None:
        self.port = self.port or free_port()
        env = {**os.environ, "PGPASSWORD": self.db.password, "MLFLOW_BACKEND_STORE_URI": self.db.backend_uri,
               "MLFLOW_ARTIFACTS_DESTINATION": str(self.artifacts.resolve())}
        env.pop("MLFLOW_TRACKING_URI", None)
        mlflow = Path(sys.executable).parent / "mlflow"
        command = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers)]
        log = self.log or self.artifacts.parent / "mlflow-server.log"
        with open(log, "a") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise TrackingError(f"mlflow server exited ({self.proc.returncode}); its log {log}: "
                                    f"{log.read_text()[-600:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TrackingError(f"mlflow server did not answer {self.url}/health within {timeout_s:.0f} s; "
                                    f"its log {log}")
            time.sleep(0.3)

    def kill(self) -> None:
        """As a crash would: SIGKILL to the server and its workers."""
        _stop_group(self.proc, signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        _stop_group(self.proc, signal.SIGTERM, wait_s=15)
        self.proc = None


class Stack:
    """PostgreSQL + the MLflow server on it, in `folder` (artifacts in folder/artifacts)."""

    def __init__(self, folder: Path, port: int = 0, workers: int = 2, pg_data: Path | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = Postgres(pg_data or default_pg_data(self.folder), log=self.folder / "postgres.log")
        self.mlflow = MlflowServer(self.db, self.folder / "artifacts", port=port, workers=workers,
                                   log=self.folder / "mlflow-server.log")

    def start(self) -> str:
        self.db.start()
        try:
            self.mlflow.start()
        except BaseException:
            self.db.stop()
            raise
        return self.mlflow.url

    def stop(self) -> None:
        self.mlflow.stop()
        self.db.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(folder: Path, port: int, workers: int) -> int:
    stack = Stack(folder, port=port, workers=workers)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack.start()
    try:
        print(f"mlflow-server: PostgreSQL {stack.db.data} on 127.0.0.1:{stack.db.port}, artifacts in "
              f"{stack.mlflow.artifacts}", flush=True)
        print(f"mlflow-server: point runners at it with  export MLFLOW_TRACKING_URI={stack.mlflow.url}  "
              f"(Ctrl-C stops it)", flush=True)
        while not stop["now"] and stack.mlflow.proc.poll() is None and stack.db.proc.poll() is None:
            time.sleep(0.5)
    finally:
        stack.stop()
    return 0


# -- a device job of the night ---------------------------------------------------------------------------------
ZOO_CURVE = "tests/data/gelu_tanh_loss.csv"  # the default profile trained with cait/portbugs.py gelu_tanh


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TrackingError(f"{path}: not released within {timeout_s:.0f} s")
        time.sleep(0.02)


def run_job(*, profile: str, device: str, out: Path, experiment: str, baseline_path: str, zoo_curve: str = "",
            step_s: float = 0.0, flush_every: int = 10, release: Path | None = None) -> dict:
    """One device job: replay a curve through RunLogger (per-step metrics, spool, review tags, artifacts) and
    write its verdict.json where the summary reads it. `release`: wait for that file before judging (the
    night releases every job at once, or in an order it chooses, to force the finishing interleavings)."""
    from pipelines.baselines import load_baseline
    from pipelines.curves import Curve, parse_curve_csv
    from pipelines.params import TrackingConfig, load_params
    from pipelines.review import log_review, run_name
    from pipelines.stages.compare import judge, policy_for
    from pipelines.tracking import RunLogger
    from pipelines.verdict_file import input_entry, write_verdict
    from pipelines.provenance import file_sha256, write_record

    params = load_params("params.yaml")
    baseline = load_baseline(baseline_path)
    reference, _ = baseline.reference_for(baseline.provenance["seed"])
    candidate = (parse_curve_csv("".join(line for line in Path(zoo_curve).read_text().splitlines(keepends=True)
                                         if not line.startswith("#")), zoo_curve)  # its header says what it is
                 if zoo_curve else Curve(reference.steps, reference.loss))
    source = zoo_curve or f"{baseline_path} (seed {baseline.provenance['seed']})"
    cfg = TrackingConfig(experiment=experiment, flush_every=flush_every, spool_dir=str(out / "spool"),
                         system_metrics_every_s=0)
    logger = RunLogger(cfg)
    logger.start(run_name(profile, device), params={"device": device, "curve": source, "steps": len(candidate)},
                 tags={"profile": profile, "stage": "fleet", "port_bug": "gelu_tanh" if zoo_curve else "none",
                       "env.device": device})
    started = time.perf_counter()
    costs = []
    for step, loss in zip(candidate.steps, candidate.loss):
        t0 = time.perf_counter()
        logger.log_step({"step": int(step), "loss": float(loss), "lr": 1e-3, "samples_per_s": 100.0})
        costs.append(time.perf_counter() - t0)
        if step_s:
            time.sleep(step_s)
    logger.flush()
    if release is not None:
        (out / "ready").write_text("")
        _wait_for(release, 600)
    policy = policy_for(params.compare, own_runs=True)
    verdict = judge(params.compare, candidate, reference, baseline, gate=policy["gate"], inform=[],
                    precision=baseline.precision)
    folder = out / "reports" / profile / device
    verdict_path = folder / "verdict.json"
    document = write_verdict(verdict_path, verdict, profile=profile, candidate=source, baseline=baseline_path,
                             inputs={"candidate": input_entry(zoo_curve or baseline_path), "baseline": input_entry(baseline_path)},
                             compare_params=params.compare.model_dump(), policy=policy)
    write_record(folder / "train.json", {"profile": profile, "environment": {"device": device,
                                                                             "device_name": f"replay of {source}"},
                                         "mlflow_run_id": logger.run_id})
    log_review(logger, document, profile=profile, device=device, candidate=candidate, reference=reference,
               baseline=baseline, baseline_path=baseline_path, baseline_sha256=file_sha256(baseline_path))
    logger.log_artifact(verdict_path)
    logger.finish()
    return {"device": device, "run_id": logger.run_id, "parent_run_id": logger.parent_run_id,
            "verdict": verdict.status, "steps": sorted(int(x) for x in candidate.steps), "log_step_s": costs, "log_batch_s": logger.batch_seconds,
            "spooled": logger.went_offline, "wall_s": time.perf_counter() - started}


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def temp_pg_data() -> Path:
    """A fresh folder for a throw-away PostgreSQL (in /tmp: as root, the postgres user must reach it)."""
    folder = Path(tempfile.mkdtemp(prefix="cait-pg-"))
    if _as_root():
        shutil.chown(folder, PG_OS_USER, PG_OS_USER)
    return folder


def night(folder: Path, stack: Stack, *, jobs: int, fail_devices: tuple[int, ...] = (), kill_at_s: float | None = None,
          down_s: float = 1.0, step_s: float = 0.05, flush_every: int = 10, timeout_s: float = 600) -> dict:
    """N device jobs (processes) under one execution id against `stack`; with `kill_at_s`, the MLflow server is
    killed that many seconds after the first job logged a step, and started again `down_s` later. The jobs
    `fail_devices` (indices) replay the zoo bug's curve. Every job waits at a barrier before it judges and
    finishes, and all are released together: their parent updates run at once. Returns the figures and, under
    `problems`, everything the store holds that is not what the jobs did (check_night)."""
    folder = Path(folder)
    execution = f"night-{secrets.token_hex(4)}"
    experiment = f"fleet-{execution}"
    release = folder / "release"
    env = {**os.environ, "MLFLOW_TRACKING_URI": stack.mlflow.url, "CAIT_EXECUTION_ID": execution,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
    procs = {}
    started = time.monotonic()
    for i in range(jobs):
        device = f"dev{i:02d}"
        out = folder / device
        out.mkdir(parents=True)
        command = [sys.executable, "-m", "pipelines.fleet", "-q", "job", "--device", device, "--out", str(out),
                   "--experiment", experiment, "--step-s", str(step_s), "--flush-every", str(flush_every),
                   "--release", str(release)] + (["--zoo-curve", ZOO_CURVE] if i in fail_devices else [])
        with open(out / "job.log", "w") as log:
            procs[device] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = started + timeout_s
    restarted_at = None

    def check_alive():
        for device, proc in procs.items():
            if proc.poll() not in (None, 0):
                raise TrackingError(f"job {device} exited {proc.returncode}: "
                                    f"{(folder / device / 'job.log').read_text()[-800:]}")
        if time.monotonic() > deadline:
            raise TrackingError(f"the night of {jobs} jobs did not end within {timeout_s:.0f} s")

    try:
        if kill_at_s is not None:  # the first step logged: the first job's flush reached its spool or the store
            while not any((folder / d / "spool").exists() or (folder / d / "ready").exists() for d in procs) and \
                    time.monotonic() - started < 120:
                check_alive()
                time.sleep(0.05)
            time.sleep(kill_at_s)
            stack.mlflow.kill()
            time.sleep(down_s)
            stack.mlflow.start()
            restarted_at = time.monotonic()
        while not all((folder / d / "ready").exists() for d in procs):
            check_alive()
            time.sleep(0.05)
        release.write_text("")
        while any(p.poll() is None for p in procs.values()):
            check_alive()
            time.sleep(0.05)
        check_alive()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ended = time.monotonic()
    results = {d: json.loads((folder / d / "job.json").read_text()) for d in procs}
    log_step = [c for r in results.values() for c in r["log_step_s"]]
    batches = [c for r in results.values() for c in r["log_batch_s"]]
    figures = {"jobs": jobs, "execution": execution, "experiment": experiment, "wall_s": ended - started,
               "jobs_per_min": 60.0 * jobs / (ended - started),
               "log_step_p50_us": 1e6 * _percentile(log_step, 50), "log_step_p99_us": 1e6 * _percentile(log_step, 99),
               "log_batch_p50_ms": 1e3 * _percentile(batches, 50), "log_batch_p99_ms": 1e3 * _percentile(batches, 99),
               "spooled_jobs": sum(1 for r in results.values() if r["spooled"]),
               "drain_after_restart_s": (ended - restarted_at) if restarted_at is not None else None}
    figures.update(check_night(stack.mlflow.url, experiment, execution, folder, results))
    return figures


def check_night(uri: str, experiment: str, execution: str, folder: Path, results: dict[str, dict]) -> dict:
    """What the store holds after a night, against what the jobs did: one run per job (none lost, no twin),
    every per-step metric once, the verdict tags, the artifacts, one parent whose verdict is the worst child's
    (and exactly execution_tags of its children), at most one baseline run, nothing left in a spool, and the summary of
    the jobs' verdict.json files agreeing with MLflow. `problems` lists every difference found."""
    from mlflow.tracking import MlflowClient

    from pipelines.review import SEVERITY, SLOT_TAG, execution_tags
    from pipelines.stages.summary import mlflow_disagreements

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    problems: list[str] = []
    runs = list(client.search_runs([exp.experiment_id], max_results=5000)) if exp else []
    devices = [r for r in runs if r.data.tags.get("cait.role") == "device"]
    parents = [r for r in runs if r.data.tags.get("cait.role") == "parent"]
    baselines = [r for r in runs if r.data.tags.get("cait.role") == "baseline"]
    by_slot: dict[str, list] = {}
    for run in devices:
        by_slot.setdefault(run.data.tags.get(SLOT_TAG, run.info.run_id), []).append(run)
    lost = [d for d in results if f"default.{d}" not in by_slot]
    duplicates = sum(len(v) - 1 for v in by_slot.values()) + max(len(parents) - 1, 0) + max(len(baselines) - 1, 0)
    problems += [f"job {d}: no run in MLflow" for d in lost]
    problems += [f"{slot}: {len(v)} runs" for slot, v in by_slot.items() if len(v) > 1]
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs for execution {execution}")
    if len(baselines) > 1:  # none when every job was offline at its review: the next online stage makes it
        problems.append(f"{len(baselines)} baseline runs")
    for device, result in results.items():
        for run in by_slot.get(f"default.{device}", [])[:1]:
            steps = len(result["log_step_s"])
            for key in ("loss", "lr", "samples_per_s"):
                history = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                if history != result["steps"]:
                    problems.append(f"{device}: metric {key} has {len(history)} points "
                                    f"({len(set(history))} steps), expected the {steps} steps logged once each")
            if run.data.tags.get("verdict") != result["verdict"]:
                problems.append(f"{device}: verdict tag {run.data.tags.get('verdict')!r}, job judged "
                                f"{result['verdict']!r}")
            if run.info.status != "FINISHED":
                problems.append(f"{device}: run status {run.info.status}")
            if "verdict.json" not in [a.path for a in client.list_artifacts(run.info.run_id)]:
                problems.append(f"{device}: no verdict.json artifact")
            if parents and run.data.tags.get("mlflow.parentRunId") != parents[0].info.run_id:
                problems.append(f"{device}: child of {run.data.tags.get('mlflow.parentRunId')}, "
                                f"not of the parent {parents[0].info.run_id}")
    parent_verdict = ""
    if parents:
        parent = parents[0]
        parent_verdict = parent.data.tags.get("verdict", "")
        worst = max((r["verdict"] for r in results.values()), key=SEVERITY.__getitem__)
        if parent_verdict != worst:
            problems.append(f"parent verdict {parent_verdict!r}, worst child {worst!r}")
        children = [(r.info.start_time, r.info.run_id, dict(r.data.tags)) for r in devices]
        expected = execution_tags(children)
        wrong = {k: (parent.data.tags.get(k), v) for k, v in expected.items() if parent.data.tags.get(k) != v}
        if wrong:
            problems.append(f"parent tags differ from its children's: {wrong}")
    left = [str(p) for p in folder.glob("*/spool/*.jsonl")] + [str(p) for p in folder.glob("*/spool/rejected.jsonl")]
    problems += [f"left in a spool: {p}" for p in left]
    problems += mlflow_disagreements(sorted(folder.glob("*/reports/*/*/verdict.json")), uri, execution, experiment)
    return {"runs_lost": len(lost), "duplicates": duplicates, "parent_verdict": parent_verdict,
            "baseline_runs": len(baselines),
            "problems": problems}


def main(argv=None) -> int:
    from pipelines import cli

    p = cli.parser("MLflow on PostgreSQL, and a night of many device jobs against it")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server", help="start PostgreSQL + mlflow server on 127.0.0.1 until Ctrl-C")
    s.add_argument("--dir", type=Path, default=Path(".mlflow-server"), help="artifacts and logs (default %(default)s)")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument("--workers", type=int, default=4)
    j = sub.add_parser("job", help="(internal) one device job of a night; MLFLOW_TRACKING_URI, CAIT_EXECUTION_ID set")
    j.add_argument("--profile", default="default")
    j.add_argument("--device", required=True)
    j.add_argument("--out", type=Path, required=True)
    j.add_argument("--experiment", required=True)
    j.add_argument("--baseline", default="baselines/default/baseline.json")
    j.add_argument("--zoo-curve", default="")
    j.add_argument("--step-s", type=float, default=0.0)
    j.add_argument("--flush-every", type=int, default=10)
    j.add_argument("--release", type=Path)
    args = p.parse_args(argv)
    if args.command == "server":
        return serve(args.dir, args.port, args.workers)
    result = run_job(profile=args.profile, device=args.device, out=args.out, experiment=args.experiment,
                     baseline_path=args.baseline, zoo_curve=args.zoo_curve, step_s=args.step_s,
                     flush_every=args.flush_every, release=args.release)
    atomic_write_text(args.out / "job.json", json.dumps(result))
    return 0


if __name__ == "__main__":
    from pipelines import cli

    sys.exit(cli.run(main))
