"""MLflow tracking that never holds training up and never loses a record.

Layout in MLflow: one run per profile/device (`cait.role: device`), holding params, the loss curve,
the verdict tags and the report. An execution named by $CAIT_EXECUTION_ID (e.g. the CI pipeline id:
all profiles and devices of one nightly) also gets a parent run that folds its device runs and shows
their worst verdict, written as a pure function of its children (settle_execution), never read-modify-write;
without it a device run stands on its own row of the runs list.

Every write is an operation handed to a background thread, which sends metrics in batches
(`log_batch`, at most 1000 per request), so the training loop only appends to a list. When the store
cannot be reached, the operations are appended to a spool file under tracking.spool_dir, one warning
is printed and the run carries on. The next RunLogger of any stage, or
`python -m pipelines.tracking sync`, uploads the spool in its original order once the store answers.
A run created while the store is down gets a local id (`local-...`) that the upload maps to the real
one; a resent create_run finds the run its first attempt made (tag cait.run_key) instead of making a twin.
Only a spool that cannot be written is an error (TrackingError, exit status 4).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import shutil
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from cait.errors import TrackingError
from cait.files import TMP_MARK, atomic_write_text
from pipelines.params import TrackingConfig
from pipelines.review import VIEW_TAG_PREFIX, execution_tags, experiment_tags

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
TRACKED_METRICS = ("loss", "lr", "samples_per_s")
LOCAL_PREFIX = "local-"
DEVICE_ROLE = "device"  # cait.role of a profile/device run; "parent" for an execution's, "baseline" for a baseline's
EXECUTION_ENV = "CAIT_EXECUTION_ID"
EXECUTION_TAG = "cait.execution"
RUN_KEY_TAG = "cait.run_key"  # the local id a run was created under: a resent create_run finds it instead of a twin
DRAIN_TIMEOUT_S = 120  # finish() waits at most this long for the sender; the rest is spooled


def project_root() -> Path:
    """The workspace whose store and spool these runs belong to: $DVC_ROOT, which DVC sets for every stage it
    runs, and to the workspace even inside `dvc exp run --temp` (whose stages run in a copy under .dvc/tmp/exps
    that is deleted afterwards, with any mlflow.db made there); else the current folder."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def workspace_path(path) -> str:
    """`path` where it stays after the run: in the workspace. '' inside `dvc exp run --temp` (or a queued
    experiment), whose stages run in a copy under .dvc/tmp/exps that DVC deletes afterwards."""
    return str(path) if Path.cwd().resolve() == project_root() else ""


def tracking_uri(cfg: TrackingConfig) -> str:
    """$MLFLOW_TRACKING_URI wins; then tracking.uri; then a SQLite file at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{project_root() / 'mlflow.db'}"


def spool_path(cfg: TrackingConfig) -> Path:
    """tracking.spool_dir; a relative one is under the project root, for the same reason as the store."""
    path = Path(cfg.spool_dir)
    return path if path.is_absolute() else project_root() / path


def _now_ms() -> int:
    return int(time.time() * 1000)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else exc.__class__.__name__)


def _client(uri: str):
    # fail within seconds, not minutes, when a tracking server is down; the sender retries later anyway
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def open_client(uri: str):
    """The MLflow client of `uri`. A local store that cannot be opened (a corrupt or foreign mlflow.db) is a
    TrackingError naming the file: unlike a server that is down it will not come back by waiting, so its
    records are not spooled."""
    db = sqlite_file(uri)
    where = str(db) if db is not None else uri
    fix = (f"move it aside (mv {db} {db}.corrupt) to start a new store, or set MLFLOW_TRACKING_URI"
           if db is not None else "check tracking.uri or MLFLOW_TRACKING_URI")
    try:
        if db is not None and db.is_file() and db.stat().st_size:
            with open(db, "rb") as f:
                if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise TrackingError(f"{db}: not an SQLite database (corrupt MLflow store); {fix}")
        return _client(uri)
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"{where}: the MLflow store cannot be opened ({_first_line(exc)}); {fix}") from None


def store_reachable(uri: str, client=None) -> bool:
    """A tracking server answers /health within 3 s; a local store (sqlite, file) can list experiments."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3) as reply:
                return reply.status == 200
        except OSError:
            return False
    try:
        (client or _client(uri)).search_experiments(max_results=1)
        return True
    except Exception:
        return False


class Spool:
    """Operations not yet accepted by the store: JSON lines, one file per process, uploaded in order.

    ids.json maps the local ids of runs created offline to their MLflow ids once uploaded; copies of
    spooled artifacts live under files/ until uploaded (the originals may change meanwhile).
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.file = self.folder / f"{time.time_ns()}-{os.getpid()}.jsonl"
        self._append_lock = threading.Lock()  # the sender thread and the main thread both append

    @property
    def ids_path(self) -> Path:
        return self.folder / "ids.json"

    def ids(self) -> dict[str, str]:
        try:
            return json.loads(self.ids_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def remember(self, local_id: str, run_id: str) -> None:
        ids = {**self.ids(), local_id: run_id}
        atomic_write_text(self.ids_path, json.dumps(ids, indent=1))

    def append(self, op: dict) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if op["op"] == "log_artifact" and not op.get("stashed"):
                stash = self.folder / "files" / uuid.uuid4().hex
                stash.mkdir(parents=True)
                source = Path(op["path"])
                kept = (shutil.copytree(source, stash / source.name) if source.is_dir()
                        else shutil.copy2(source, stash))
                op = {**op, "path": str(kept), "stashed": True}
            with self._append_lock, self.file.open("a") as f:
                f.write(json.dumps(op) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise TrackingError(f"MLflow records could not be spooled to {self.folder} ({_first_line(exc)}); "
                                f"free disk space or set tracking.spool_dir to a writable folder") from None

    def pending(self) -> list[Path]:
        return sorted((p for p in self.folder.glob("*.jsonl") if TMP_MARK not in p.name),  # not a rewrite in progress
                      key=lambda p: (len(p.name), p.name))

    def uploadable(self) -> list[Path]:
        """Pending files no other live process is still appending to (the name carries the writer's pid)."""
        def writer_alive(path: Path) -> bool:
            try:
                pid = int(path.stem.rsplit("-", 1)[1])
            except (IndexError, ValueError):
                return False
            if pid == os.getpid():
                return False
            try:
                os.kill(pid, 0)
                return True
            except ProcessLookupError:
                return False
            except PermissionError:
                return True

        return [p for p in self.pending() if not writer_alive(p)]

    @contextlib.contextmanager
    def locked(self):
        """One uploader at a time (parallel stages of a DVC matrix share the spool)."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class _Unresolved(Exception):
    """An operation on a run created offline whose creation has not been uploaded yet."""


def _search(client, experiment_id: str, filter_string: str, max_results: int = 1000) -> list:
    return list(client.search_runs([experiment_id], filter_string=filter_string, max_results=max_results))


def _children(client, experiment_id: str, parent_id: str) -> list[tuple[int, str, dict[str, str]]]:
    return [(run.info.start_time or 0, run.info.run_id, dict(run.data.tags))
            for run in _search(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_id}'")]


def keep_earliest(client, experiment_id: str, filter_string: str) -> str:
    """Of the live runs `filter_string` finds, the earliest (start time, then run id); the others are deleted.
    Runners that start together may each create the run a key names (ensure_run): every one that checks after
    the last was created keeps the same one. '' when none is found."""
    runs = _search(client, experiment_id, filter_string)
    if not runs:
        return ""
    keep = min(runs, key=lambda run: (run.info.start_time or 0, run.info.run_id)).info.run_id
    for run in runs:
        if run.info.run_id != keep:
            with contextlib.suppress(Exception):  # already deleted (by another runner)
                client.delete_run(run.info.run_id)
    return keep


def execution_parent(client, experiment_id: str, execution: str, also: str = "") -> str:
    """The one parent run of an execution: of the live parents tagged with it, the earliest (start time, then
    run id). Runners that start together may each create one; the others' device runs (and those of `also`,
    a parent merged before) are moved under it and the others deleted, so every runner ends on the same one."""
    parents = _search(client, experiment_id,
                      f"tags.`{EXECUTION_TAG}` = '{execution}' and tags.`cait.role` = 'parent'")
    if not parents:
        return also
    keep = min(parents, key=lambda run: (run.info.start_time or 0, run.info.run_id)).info.run_id
    for other in {run.info.run_id for run in parents} | ({also} if also else set()):
        if other == keep:
            continue
        for _, child, _ in _children(client, experiment_id, other):
            client.set_tag(child, "mlflow.parentRunId", keep)
        with contextlib.suppress(Exception):  # already deleted (by another runner)
            client.delete_run(other)
    return keep


def settle_execution(client, parent_id: str, end_time: int | None = None, rounds: int = 50) -> str:
    """Write the execution's verdict tags onto its parent as a pure function of its device runs
    (pipelines/review.py execution_tags), and end it at `end_time` if given; returns the parent's id.

    No read-modify-write of the parent's own tags: the children are read, the tags written, and the children
    read again; when a device finished meanwhile, the tags are computed and written again. Every device writes
    its own verdict before it settles, so the last write of all is computed from every child's verdict."""
    parent = client.get_run(parent_id)
    experiment_id = parent.info.experiment_id
    execution = parent.data.tags.get(EXECUTION_TAG, "")
    if execution:
        parent_id = execution_parent(client, experiment_id, execution, also=parent_id)
    children = _children(client, experiment_id, parent_id)
    for _ in range(rounds):
        tags = execution_tags(children)
        if not tags:
            break
        client.log_batch(parent_id, tags=[_tag(k, v) for k, v in tags.items()])
        children = _children(client, experiment_id, parent_id)
        if execution_tags(children) == tags:
            break
    if end_time is not None:
        client.set_terminated(parent_id, "FINISHED", end_time=end_time)
    return parent_id


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, str(value)[:5000])


def _execute(client, op: dict, ids: dict[str, str], replay: bool = False):
    """Send one operation to the store; a create_run returns the new run. `replay`: the operation comes from
    the spool, and may have reached the store before (a create_run then finds its run by RUN_KEY_TAG)."""
    from mlflow.entities import Metric, Param, RunTag

    def resolve(run_id: str) -> str:
        if run_id.startswith(LOCAL_PREFIX):
            if run_id not in ids:
                raise _Unresolved(run_id)
            return ids[run_id]
        return run_id

    kind = op["op"]
    if kind == "create_run":
        experiment = client.get_experiment_by_name(op["experiment"])
        if experiment is None:
            try:
                experiment_id = client.create_experiment(op["experiment"], tags=experiment_tags())
            except Exception:  # another runner created it a moment ago
                experiment = client.get_experiment_by_name(op["experiment"])
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:  # an experiment made before: a missing tag is added, our view brought up to date, its kind kept
            experiment_id = experiment.experiment_id
            for key, value in experiment_tags().items():
                current = experiment.tags.get(key)
                if current is None or (key.startswith(VIEW_TAG_PREFIX) and current != value):
                    client.set_experiment_tag(experiment_id, key, value)
        tags = {**op["tags"], RUN_KEY_TAG: op["local_id"]}
        if tags.get("mlflow.parentRunId"):
            tags["mlflow.parentRunId"] = resolve(tags["mlflow.parentRunId"])
        # a resent create_run (its first attempt may have reached the store before the reply was lost)
        found = _search(client, experiment_id, f"tags.`{RUN_KEY_TAG}` = '{op['local_id']}'", 1) if replay else []
        run = found[0] if found else client.create_run(experiment_id, start_time=op["start_time"], tags=tags,
                                                       run_name=op["run_name"])
        ids[op["local_id"]] = run.info.run_id
        return run
    elif kind == "log_batch":
        run_id = resolve(op["run"])
        metrics = [Metric(k, v, t, s) for k, v, t, s in op.get("metrics", [])]
        params = [Param(k, v) for k, v in op.get("params", {}).items()]
        tags = [RunTag(k, v) for k, v in op.get("tags", {}).items()]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])
        for i in range(0, len(tags), MAX_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=tags[i:i + MAX_TAGS_PER_BATCH])
    elif kind == "log_artifact":
        if Path(op["path"]).is_dir():  # a folder keeps its name, as mlflow's log_artifact does for files
            folder = "/".join(p for p in (op.get("folder"), Path(op["path"]).name) if p)
            client.log_artifacts(resolve(op["run"]), op["path"], folder)
        else:
            client.log_artifact(resolve(op["run"]), op["path"], op.get("folder"))
    elif kind == "terminate":
        client.set_terminated(resolve(op["run"]), op["status"], end_time=op["end_time"])
    elif kind == "settle_execution":
        return settle_execution(client, resolve(op["run"]), op.get("end_time"))
    else:
        raise ValueError(f"unknown spooled operation {kind!r}")


def refused(exc: BaseException) -> bool:
    """The store answered and said no (an HTTP 4xx: a deleted run, a bad value): resending will not help.
    A timeout, a lost connection or a 5xx (its database restarting) is an outage: the operation waits."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return not isinstance(exc, OSError)  # a local store's own error (sqlite) is a refusal as before
    status = exc.get_http_status_code()
    return 400 <= status < 500


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _count(spool: Spool) -> int:
    return sum(len(p.read_text().splitlines()) for p in spool.pending())


def upload_spool(uri: str, spool_dir: Path | str, client=None) -> tuple[int, int]:
    """Send spooled operations in order; returns (sent, still pending). Stops at the first outage.

    An operation the reachable store refuses (e.g. for a deleted run) is moved to rejected.jsonl with
    a warning instead of blocking every later one.
    """
    spool = Spool(spool_dir)
    if not spool.pending():
        return 0, 0
    client = client or _client(uri)
    sent = 0
    with spool.locked():
        ids = spool.ids()
        for path in spool.uploadable():
            ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for i, op in enumerate(ops):
                try:
                    _execute(client, op, ids, replay=True)
                except Exception as exc:
                    if isinstance(exc, _Unresolved) or not refused(exc) or not store_reachable(uri, client):
                        atomic_write_text(path, "".join(json.dumps(o) + "\n" for o in ops[i:]))
                        return sent, _count(spool)
                    with (spool.folder / "rejected.jsonl").open("a") as f:
                        f.write(json.dumps({**op, "error": _first_line(exc)}) + "\n")
                    _warn(f"MLflow store {uri} refused a spooled {op['op']} ({_first_line(exc)}); "
                          f"kept in {spool.folder / 'rejected.jsonl'}")
                    continue
                sent += 1
                if op["op"] == "create_run":
                    spool.remember(op["local_id"], ids[op["local_id"]])
                if op.get("stashed"):
                    shutil.rmtree(Path(op["path"]).parent, ignore_errors=True)
            path.unlink()
    return sent, _count(spool)


def sync(cfg: TrackingConfig, quiet: bool = False) -> tuple[int, int]:
    """Upload whatever earlier runs spooled, if the store answers now."""
    uri = tracking_uri(cfg)
    spool = Spool(spool_path(cfg))
    if not spool.pending() or not store_reachable(uri):
        return 0, _count(spool)
    sent, left = upload_spool(uri, spool.folder)
    if sent and not quiet:
        print(f"tracking: uploaded {sent} spooled record(s) to {uri}" + (f"; {left} still pending" if left else ""),
              file=sys.stderr)
    return sent, left


class RunLogger:
    """Logs to one MLflow run without blocking the caller; tracking.enabled: false makes every call a no-op."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.uri = tracking_uri(cfg) if cfg.enabled else ""
        self.run_id = ""
        self.parent_run_id = ""
        self.experiment_id = ""  # known when the run was created online
        self.spooled = 0
        self._pending_metrics: list = []
        self._metrics_lock = threading.Lock()  # the system-metrics thread queues metrics too
        self._queue: queue.Queue = queue.Queue()
        self._offline = False
        self._offline_lock = threading.Lock()  # the sender thread and the caller may both find the store down
        self._worker: threading.Thread | None = None
        self._system: threading.Thread | None = None
        self._stop_system = threading.Event()
        self._client = None
        self._closing_at_exit = False
        self._spool = Spool(spool_path(cfg))
        self._ensured: list[tuple[str, str]] = []  # keys of runs ensure_run created: checked again at close
        self.batch_seconds: list[float] = []  # round trip of each metrics batch sent (benchmarks/bench_fleet.py)
        if self.enabled:
            self._client = open_client(self.uri)
            sync(cfg)  # records an earlier outage left behind go first

    # -- sending -----------------------------------------------------------------------------
    def _go_offline(self, exc: BaseException | None) -> None:
        """Switch to the spool, with one warning however many threads find the store down at once."""
        with self._offline_lock:
            if self._offline:
                return
            self._offline = True
        why = f" ({_first_line(exc)})" if exc else ""
        _warn(f"MLflow tracking store {self.uri} is unreachable{why}; the run continues and its records are "
              f"kept in {self._spool.folder}/ until it answers again (any later stage, or "
              f"`python -m pipelines.tracking sync`, uploads them)")

    def _try_now(self, op: dict):
        """Execute `op` against the store unless offline; (True, result) if it went through, else
        (False, None) after which the caller spools it. A failure turns the logger offline."""
        if self._offline:
            return False, None
        try:
            return True, _execute(self._client, op, self._spool.ids())
        except _Unresolved:  # names a run created offline: it must wait in the spool behind that run
            return False, None
        except Exception as exc:
            self._go_offline(exc)
            return False, None

    def _spool_op(self, op: dict) -> None:
        self._spool.append(op)
        self.spooled += 1

    def _send(self, op: dict) -> None:
        """Worker side: send, or spool once the store has failed us."""
        started = time.perf_counter()
        sent, _ = self._try_now(op)
        if not sent:
            self._spool_op(op)
        elif op["op"] == "log_batch" and op.get("metrics"):
            self.batch_seconds.append(time.perf_counter() - started)

    def _work(self) -> None:
        while True:
            op = self._queue.get()
            try:
                if op is None:
                    return
                self._send(op)
            except TrackingError as exc:  # the spool itself failed: say so, keep the run going
                _warn(str(exc))
            finally:
                self._queue.task_done()

    def _submit(self, op: dict) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="mlflow-sender", daemon=True)
            self._worker.start()
            if not self._closing_at_exit:  # a stage that forgets close() still sends everything
                atexit.register(self.close)
                self._closing_at_exit = True
        self._queue.put(op)

    def _create_run(self, run_name: str, tags: dict[str, str]) -> str:
        """Create a run now (its id is needed at once); offline, a local id stands in for it."""
        op = {"op": "create_run", "local_id": LOCAL_PREFIX + uuid.uuid4().hex, "experiment": self.cfg.experiment,
              "run_name": run_name, "tags": {k: str(v)[:5000] for k, v in tags.items()}, "start_time": _now_ms()}
        sent, run = self._try_now(op)
        if sent:
            self.experiment_id = run.info.experiment_id
            return run.info.run_id
        self._spool_op(op)
        return op["local_id"]

    def _resolve(self, run_id: str) -> str:
        return self._spool.ids().get(run_id, run_id)

    # -- the API stages use --------------------------------------------------------------------
    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str], parent_name: str = "") -> str:
        """Start this profile/device's run; with $CAIT_EXECUTION_ID, as a child of the execution's parent run
        (named `parent_name` and the execution id when this call creates it)."""
        if not self.enabled:
            return ""
        tags = {**tags, "cait.role": DEVICE_ROLE}
        if os.environ.get(EXECUTION_ENV):
            self.parent_run_id = self._parent_run(parent_name or run_name)
            tags["mlflow.parentRunId"] = self.parent_run_id
        self.run_id = self._create_run(run_name, tags)
        self.log_params(params)
        return self.run_id

    def run_tags(self, run_id: str) -> dict[str, str]:
        """A run's tags as the store has them now; {} while it cannot be asked (offline, or not uploaded yet)."""
        if not self.enabled or self._offline or not run_id or run_id.startswith(LOCAL_PREFIX):
            return {}
        self.drain()  # what this process queued for the run is in the store first
        try:
            return dict(self._client.get_run(run_id).data.tags)
        except Exception as exc:
            self._go_offline(exc)
            return {}

    def _parent_run(self, name: str) -> str:
        """The execution's parent run: found by its cait.execution tag, else created."""
        execution = os.environ[EXECUTION_ENV]
        if not self._offline:
            try:
                experiment = self._client.get_experiment_by_name(self.cfg.experiment)
                if experiment:
                    found = self._client.search_runs(
                        [experiment.experiment_id], max_results=1,
                        filter_string=f"tags.`{EXECUTION_TAG}` = '{execution}' and tags.`cait.role` = 'parent'")
                    if found:
                        return found[0].info.run_id
            except Exception as exc:
                self._go_offline(exc)
        run_id = self._create_run(f"{name} · {execution}", {EXECUTION_TAG: execution, "cait.role": "parent"})
        if run_id.startswith(LOCAL_PREFIX) or not self.experiment_id:
            return run_id
        try:  # another runner may have created one at the same moment: all use the earliest
            return execution_parent(self._client, self.experiment_id, execution)
        except Exception as exc:
            self._go_offline(exc)
            return run_id

    def ensure_run(self, key_tag: str, key_value: str, *, run_name: str, tags: dict[str, str],
                   params: dict[str, str], series: dict[str, tuple]) -> str:
        """A top-level run identified by the tag `key_tag` = `key_value` (e.g. a baseline file's hash),
        created with its params and per-step series the first time and found again afterwards.

        Only while the store answers: offline it returns "" and the next stage that runs online
        creates it (the key makes that idempotent), so an outage never makes two of them."""
        if not self.enabled:
            return ""
        self.drain()  # what was queued goes first: the store's state is then known, and nothing races the sender
        if self._offline:
            return ""
        try:
            experiment = self._client.get_experiment_by_name(self.cfg.experiment)
            if experiment is not None:
                found = self._client.search_runs([experiment.experiment_id], max_results=1,
                                                 filter_string=f"tags.`{key_tag}` = '{key_value}'")
                if found:
                    return found[0].info.run_id
        except Exception as exc:
            self._go_offline(exc)
            return ""
        run_id = self._create_run(run_name, {**tags, key_tag: key_value})
        if not run_id.startswith(LOCAL_PREFIX):
            self._ensured.append((key_tag, key_value))
            try:  # another runner may have made it at the same moment: all keep the earliest
                keep = keep_earliest(self._client, self.experiment_id, f"tags.`{key_tag}` = '{key_value}'")
            except Exception as exc:
                self._go_offline(exc)
                keep = run_id
            if keep and keep != run_id:
                return keep
        self._submit({"op": "log_batch", "run": run_id, "params": {k: str(v)[:6000] for k, v in params.items()}})
        stamp = _now_ms()
        rows = [[name, float(v), stamp, int(s)] for name, (steps, values) in series.items()
                for s, v in zip(steps, values) if v == v]
        self._submit({"op": "log_batch", "run": run_id, "metrics": rows})  # sent in batches of 1000
        self._submit({"op": "terminate", "run": run_id, "status": "FINISHED", "end_time": stamp})
        return run_id

    def attach(self, run_id: str, parent_run_id: str = "") -> None:
        """Continue a run another stage started (compare and report add to the train run)."""
        if self.enabled and run_id:
            self.run_id = self._resolve(run_id)
            self.parent_run_id = self._resolve(parent_run_id) if parent_run_id else ""

    @property
    def went_offline(self) -> bool:
        """The store failed this logger at some point (its later records went through the spool)."""
        return self._offline

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.run_id)

    def update_execution(self, end: bool = False) -> None:
        """Recompute the execution's parent tags from all its device runs (settle_execution), after what this
        run queued so far; `end` also marks the parent finished."""
        if self.active and self.parent_run_id:
            self._submit({"op": "settle_execution", "run": self.parent_run_id,
                          **({"end_time": _now_ms()} if end else {})})

    def log_params(self, params: dict[str, str]) -> None:
        if self.active:
            self._submit({"op": "log_batch", "run": self.run_id,
                          "params": {k: str(v)[:6000] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, str], run_id: str | None = None) -> None:
        """Tags on this run, or on another one (the parent) given by run_id."""
        target = run_id if run_id is not None else self.run_id
        if self.enabled and target:
            self._submit({"op": "log_batch", "run": target, "tags": {k: str(v)[:5000] for k, v in tags.items()}})

    def log_metrics(self, values: dict[str, float], step: int = 0, timestamp_ms: int | None = None) -> None:
        """Queue metrics; they go out in one batch per tracking.flush_every steps (or at flush/finish).
        A fixed `timestamp_ms` makes a repeated upload of the same values a no-op in SQL stores."""
        if self.active:
            stamp = _now_ms() if timestamp_ms is None else int(timestamp_ms)
            rows = [[k, float(v), stamp, int(step)] for k, v in values.items()]
            with self._metrics_lock:
                self._pending_metrics += rows

    def log_step(self, row: dict) -> None:
        self.log_metrics({k: row[k] for k in TRACKED_METRICS}, step=int(row["step"]))
        if len(self._pending_metrics) >= self.cfg.flush_every * len(TRACKED_METRICS):
            self.flush()

    def flush(self) -> None:
        """Hand the queued metrics to the sender thread (returns at once)."""
        if self._pending_metrics and self.active:
            with self._metrics_lock:
                batch, self._pending_metrics = self._pending_metrics, []
            self._submit({"op": "log_batch", "run": self.run_id, "metrics": batch})

    def log_artifact(self, path: Path | str, folder: str | None = None) -> None:
        if self.active:
            self._submit({"op": "log_artifact", "run": self.run_id, "path": str(Path(path).resolve()),
                          "folder": folder})

    def start_system_metrics(self, every_s: float) -> None:
        """Sample CPU/memory (and GPU where pynvml sees one) every `every_s` seconds as system/* metrics."""
        if not self.active or every_s <= 0 or self._system is not None:
            return
        monitors = []
        try:
            from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

            monitors.append(CPUMonitor())
        except Exception:  # psutil missing
            pass
        with contextlib.suppress(Exception):
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            monitors.append(GPUMonitor())
        if not monitors:
            return

        def sample() -> None:
            step = 0
            while not self._stop_system.wait(every_s):
                values = {}
                for monitor in monitors:
                    with contextlib.suppress(Exception):
                        monitor.collect_metrics()
                        values.update({f"system/{k}": v for k, v in monitor.aggregate_metrics().items()})
                        monitor.clear_metrics()
                if values:
                    self.log_metrics(values, step=step)
                    step += 1

        self._system = threading.Thread(target=sample, name="mlflow-system-metrics", daemon=True)
        self._system.start()

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait until the sender has sent or spooled everything queued so far."""
        if self._worker is None:
            return
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._queue.unfinished_tasks:  # a hung store: keep the rest locally
            self._go_offline(None)
            while self._queue.unfinished_tasks:
                time.sleep(0.05)

    def close(self) -> None:
        """Send or spool everything, stop the threads, and upload the spool if the store is back."""
        if not self.enabled or (self._worker is None and self._system is None and not self._pending_metrics
                                and not self.spooled):
            return
        self._stop_system.set()
        if self._system is not None:
            self._system.join(timeout=5)
            self._system = None
        self.flush()
        self.drain()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=5)
            self._worker = None
        for key_tag, key_value in self._ensured:  # a twin made after our first check goes now
            if not self._offline:
                with contextlib.suppress(Exception):
                    keep_earliest(self._client, self.experiment_id, f"tags.`{key_tag}` = '{key_value}'")
        self._ensured = []
        if self.spooled:
            self.spooled = 0
            sent, left = sync(self.cfg)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S  # a busy store (timeouts under load): try again while it
            while (left and self._spool.uploadable() and time.monotonic() < deadline  # answers, not for files
                   and store_reachable(self.uri)):  # other live processes still write
                time.sleep(1)
                sent, left = sync(self.cfg)
            if left:
                _warn(f"{left} MLflow record(s) wait in {self._spool.folder}/ for {self.uri}; "
                      f"run `python -m pipelines.tracking sync` once it is reachable")

    def finish(self, status: str = "FINISHED") -> None:
        """End the run and mark the execution's parent run finished (a later stage or device of the same
        execution finds the parent by its tag and adds to it); then `close`."""
        if self.active:
            self.flush()
            self._submit({"op": "terminate", "run": self.run_id, "status": status, "end_time": _now_ms()})
            self.update_execution(end=True)
        self.close()


def main(argv=None) -> int:
    """`python -m pipelines.tracking sync`: upload records an outage left in tracking.spool_dir."""
    from pipelines import cli
    from pipelines.params import load_params

    p = cli.parser("upload MLflow records spooled while the tracking store was unreachable")
    p.add_argument("command", choices=["sync"])
    args = p.parse_args(argv)
    cfg = load_params(args.params).tracking
    if not cfg.enabled:
        print("tracking: disabled (tracking.enabled: false); nothing to upload")
        return 0
    sent, left = sync(cfg, quiet=True)
    uri = tracking_uri(cfg)
    if left:
        raise TrackingError(f"{left} record(s) still wait in {spool_path(cfg)}/: the MLflow store {uri} is "
                            f"unreachable; start it or point MLFLOW_TRACKING_URI at it, then rerun")
    print(f"tracking: {sent} spooled record(s) uploaded to {uri}; nothing pending")
    return 0


if __name__ == "__main__":
    from pipelines import cli

    sys.exit(cli.run(main))
