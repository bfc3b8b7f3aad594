"""RunLogger against a real `mlflow server` on 127.0.0.1: log, lose the server mid-run, get it back.

The server runs in its own process group and is started twice (each start takes several seconds).
Everything is checked over the server's REST API, as a reviewer's tools would see it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipelines.params import TrackingConfig
from pipelines.tracking import LOCAL_PREFIX, RunLogger, Spool, sync

MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` with a SQLite backend and proxied artifacts, in its own process group."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not answer /health within 120 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def get(self, endpoint: str, **query) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}",
                                    timeout=10) as reply:
            return json.loads(reply.read())

    def post(self, endpoint: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def loss_steps(self, run_id: str) -> list[int]:
        history = self.get("metrics/get-history", run_id=run_id, metric_key="loss", max_results=1000)
        return sorted(int(m["step"]) for m in history.get("metrics", []))

    def run(self, run_id: str) -> dict:
        return self.get("runs/get", run_id=run_id)["run"]


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path, free_port())
    srv.start()
    yield srv
    srv.stop()


def log_steps(logger: RunLogger, steps: range) -> None:
    for step in steps:
        logger.log_step({"step": step, "loss": 2.0 - 0.01 * step, "lr": 1e-3, "samples_per_s": 100.0})


@pytest.mark.slow  # two server starts: 20-80 s on a busy machine
def test_outage_mid_run_loses_nothing(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CAIT_EXECUTION_ID", "nightly-test-1")
    cfg = TrackingConfig(uri=server.url, experiment="outage", flush_every=5, spool_dir=str(tmp_path / "spool"),
                         system_metrics_every_s=0)
    report = tmp_path / "report.html"
    report.write_text("<html>report</html>")

    # 1. store up: the run, its params and the first steps arrive
    logger = RunLogger(cfg)
    run_id = logger.start("default-cpu-train", params={"train.steps": "20"}, tags={"profile": "default"})
    assert not run_id.startswith(LOCAL_PREFIX)
    log_steps(logger, range(10))
    logger.flush()
    logger.drain()
    assert server.loss_steps(run_id) == list(range(10))

    # 2. the server goes away mid-run: the run completes, with one warning, and nothing raises
    server.stop()
    started = time.perf_counter()
    log_steps(logger, range(10, 20))  # two batches handed over while the sender waits on a dead server
    assert time.perf_counter() - started < 0.5, "logging must never wait for the store"
    logger.set_tags({"verdict": "pass", "rule.modelzoo": "pass"})
    logger.set_tags({"verdict.default.cpu": "pass"}, run_id=logger.parent_run_id)
    logger.log_artifact(report, "report")
    logger.finish()
    # a second run that starts while the store is down gets a local id
    offline = RunLogger(cfg)
    offline_id = offline.start("other-cpu-train", params={"train.steps": "3"}, tags={"profile": "other"})
    assert offline_id.startswith(LOCAL_PREFIX)
    log_steps(offline, range(3))
    offline.finish()
    err = capsys.readouterr().err
    assert "unreachable" in err and str(tmp_path / "spool") in err
    assert Spool(cfg.spool_dir).pending(), "the records must wait in the spool"

    # 3. the server is back: the spool is uploaded in order and nothing is missing
    server.start()
    sent, left = sync(cfg)
    assert left == 0 and sent > 0
    assert not Spool(cfg.spool_dir).pending()
    assert server.loss_steps(run_id) == list(range(20))
    run = server.run(run_id)
    tags = tags_of(run)
    assert run["info"]["status"] == "FINISHED"
    assert tags["verdict"] == "pass" and tags["rule.modelzoo"] == "pass"
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"train.steps": "20"}
    artifacts = server.get("artifacts/list", run_id=run_id, path="report")
    assert [f["path"] for f in artifacts["files"]] == ["report/report.html"]

    parent = server.run(tags["mlflow.parentRunId"])
    parent_tags = tags_of(parent)
    assert parent_tags["cait.role"] == "parent" and parent_tags["cait.execution"] == "nightly-test-1"
    assert parent_tags["verdict.default.cpu"] == "pass"

    real_offline_id = Spool(cfg.spool_dir).ids()[offline_id]
    assert server.loss_steps(real_offline_id) == [0, 1, 2]
    offline_run = server.run(real_offline_id)
    assert offline_run["info"]["status"] == "FINISHED"
    assert offline_run["info"]["run_name"] == "other-cpu-train"
    # both children of the same execution hang under a parent tagged with it
    children = server.post("runs/search", {"experiment_ids": [run["info"]["experiment_id"]],
                                           "filter": "tags.`cait.role` = 'device'"})["runs"]
    assert {r["info"]["run_id"] for r in children} == {run_id, real_offline_id}


def test_a_stage_completes_while_the_store_is_down(project, monkeypatch):
    """compare with the tracking server down: exit 0, verdict written, one warning, records spooled."""
    from conftest import write_params
    from fake_runs import reference_loss, write_run

    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    write_params(project, {"tracking": {"spool_dir": "spool"}})
    base = reference_loss(60)
    write_run(project, base, baseline_loss=base, run_id="0" * 32)
    done = subprocess.run([sys.executable, "-m", "pipelines.stages.compare", "-q"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (project / "reports" / "default" / "verdict.json").is_file()
    assert done.stderr.count("warning: MLflow tracking store") == 1, done.stderr
    spooled = [json.loads(line) for f in Spool(project / "spool").pending() for line in f.read_text().splitlines()]
    tags = {k: v for op in spooled for k, v in op.get("tags", {}).items()}
    assert tags["verdict"] == "pass" and tags["rule.modelzoo"] == "pass"
    assert any(op["op"] == "log_artifact" and op["path"].endswith("verdict.json") for op in spooled)


def test_one_warning_when_threads_find_the_store_down_at_once(tmp_path, capsys):
    """The sender thread and the caller (e.g. compare making the baseline run) can both hit a dead store."""
    import threading

    cfg = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", spool_dir=str(tmp_path / "spool"),
                         system_metrics_every_s=0)
    logger = RunLogger(cfg)
    start = threading.Barrier(8)

    def fail():
        start.wait()
        logger._go_offline(ConnectionError("refused"))

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert capsys.readouterr().err.count("warning: MLflow tracking store") == 1
