"""MLflow tracking for the chain: one run per train stage, which later stages add to.

Uses `MlflowClient` (no global "active run" state). Metrics are buffered and sent with `log_batch`
(at most 1000 per request), never one call per value. An unreachable store is a TrackingError
naming the URI and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from cait.errors import TrackingError
from pipelines.params import TrackingConfig

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
TRACKED_METRICS = ("loss", "lr", "samples_per_s")


def tracking_uri(cfg: TrackingConfig) -> str:
    """$MLFLOW_TRACKING_URI wins; then tracking.uri; then a SQLite file at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def _unreachable(uri: str, exc: Exception) -> TrackingError:
    detail = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
    return TrackingError(f"MLflow tracking store {uri} failed ({detail}); start it, point MLFLOW_TRACKING_URI "
                         f"or tracking.uri at a reachable one, or set tracking.enabled: false")


class RunLogger:
    """Logs to one MLflow run; a disabled logger (tracking.enabled: false) accepts calls and does nothing."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.uri = tracking_uri(cfg) if cfg.enabled else ""
        self.run_id = ""
        self._pending: list = []
        self._client = None
        if self.enabled:
            # fail within seconds, not minutes, when a tracking server is down
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # mlflow raises MlflowException, requests and sqlalchemy errors alike
            raise _unreachable(self.uri, exc) from None

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        if not self.enabled:
            return ""
        experiment = self._call(self._client.get_experiment_by_name, self.cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else self._call(
            self._client.create_experiment, self.cfg.experiment)
        run = self._call(self._client.create_run, experiment_id, run_name=run_name)
        self.run_id = run.info.run_id
        self.log_params(params)
        self.set_tags(tags)
        return self.run_id

    def attach(self, run_id: str) -> None:
        """Continue a run another stage started (compare and report add to the train run)."""
        if self.enabled and run_id:
            self._call(self._client.get_run, run_id)
            self.run_id = run_id

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.run_id)

    def log_params(self, params: dict[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._call(self._client.log_batch, self.run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), MAX_TAGS_PER_BATCH):
            self._call(self._client.log_batch, self.run_id, tags=items[i:i + MAX_TAGS_PER_BATCH])

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        """Queue metrics; they are sent in batches by `flush` (called every tracking.flush_every steps)."""
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), stamp, step) for k, v in values.items()]

    def log_step(self, row: dict) -> None:
        self.log_metrics({k: row[k] for k in TRACKED_METRICS}, step=int(row["step"]))
        if len(self._pending) >= self.cfg.flush_every * len(TRACKED_METRICS):
            self.flush()

    def flush(self) -> None:
        while self._pending and self.active:
            batch, self._pending = self._pending[:MAX_METRICS_PER_BATCH], self._pending[MAX_METRICS_PER_BATCH:]
            self._call(self._client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: Path | str, folder: str | None = None) -> None:
        if self.active:
            self._call(self._client.log_artifact, self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            self.flush()
            self._call(self._client.set_terminated, self.run_id, status)
