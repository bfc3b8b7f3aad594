"""The MLflow UI on the project's store, started the way that works here: `make ui` (python -m pipelines.ui).

  python -m pipelines.ui               # serves ./mlflow.db (or tracking.uri) at http://127.0.0.2:5000
  python -m pipelines.ui --port 5001   # another port

Prints the address of the `cait-verdicts` view of the acceptance experiment (the verdict columns, and in its
chart view the candidate's `loss` and the baseline's `baseline_loss` on one chart) and serves until Ctrl-C.
What it passes `mlflow server`, and why:
  --host 127.0.0.2   loopback; for 127.0.0.1/localhost the UI opens its assistant panel over a quarter of the page
  --allowed-hosts    the address itself: without it every page is "Invalid Host header"
  --workers 1        the default 4 died 9 times in 3 minutes under load here; one held
The reports and run descriptions link this address unless tracking.ui_url names another (pipelines/review.py).
A tracking server (tracking.uri http(s)://...) is its own UI: its view's address is printed, nothing started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from cait.errors import TrackingError
from pipelines import cli
from pipelines.params import load_params
from pipelines.review import DEFAULT_UI_HOST, DEFAULT_UI_PORT, experiment_tags, view_link

STOP_GRACE_S = 10.0  # seconds a stopping server may take before it is killed
START_TIMEOUT_S = 300  # a first start migrates a new SQLite store; on a loaded 2-core machine a start took 40-150 s


def server_command(uri: str, host: str, port: int, artifacts: str | None = None) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1", "--allowed-hosts", f"{host}:{port},{host}", "--cors-allowed-origins", f"http://{host}:{port}",
            *(["--default-artifact-root", artifacts] if artifacts else [])]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _get(url: str, timeout: float = 10) -> bytes:
    return urllib.request.urlopen(url, timeout=timeout).read()


@contextlib.contextmanager
def serve(uri: str, host: str = DEFAULT_UI_HOST, port: int = DEFAULT_UI_PORT, artifacts: str | None = None
          ) -> Iterator[str]:
    """`mlflow server` on the store `uri` at host:port while the block runs; yields its base URL once it answers.
    `artifacts`: the server's default artifact root (else mlflow's, ./mlartifacts)."""
    if not port_free(host, port):
        raise TrackingError(f"{host}:{port}: the port is taken (another `make ui`?); open that one, or pass --port")
    base = f"http://{host}:{port}"
    log = tempfile.TemporaryFile("w+")  # not a pipe: the server's log would fill it and stall the server
    # a session of its own: mlflow's CLI runs the web server as a child, and both must go when the block ends
    server = subprocess.Popen(server_command(uri, host, port, artifacts), stdout=subprocess.DEVNULL, stderr=log,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                log.seek(0)
                last = (log.read().strip().splitlines() or ["no output"])[-1]
                raise TrackingError(f"{uri}: mlflow server exited ({server.returncode}): {last}")
            try:
                _get(f"{base}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TrackingError(f"{base}: mlflow server did not answer within {START_TIMEOUT_S} s") from None
                time.sleep(0.5)
        yield base
    finally:
        stop(server)
        log.close()


def stop(server: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """End the server's whole process group: SIGTERM (the web server's graceful shutdown), then SIGKILL after
    `grace_s`; a graceful shutdown waits for open browser connections, so it is bounded."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def view_url(base: str, experiment: str) -> str:
    """The verdict view of `experiment` on the served UI (its tags brought up to date first: a store older than the
    view gets it); the experiments list when it has no runs yet."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    try:
        found = json.loads(_get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}"))
    except urllib.error.HTTPError:  # RESOURCE_DOES_NOT_EXIST: nothing tracked yet
        return f"{base}/#/experiments"
    experiment_id = found["experiment"]["experiment_id"]
    for key, value in experiment_tags().items():
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/set-experiment-tag",
                                         data=json.dumps({"experiment_id": experiment_id, "key": key,
                                                          "value": value}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
    return view_link(base, experiment_id)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    from pipelines.tracking import tracking_uri

    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--host", default=DEFAULT_UI_HOST, help=f"address to serve on (default {DEFAULT_UI_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_UI_PORT, help=f"port (default {DEFAULT_UI_PORT})")
    args = p.parse_args(argv)
    params = load_params(args.params)
    uri = tracking_uri(params.tracking)
    if uri.startswith(("http://", "https://")):
        print(f"ui: {uri} is a tracking server and its own UI: {view_url(uri.rstrip('/'), params.tracking.experiment)}")
        return 0
    # Ctrl-C or a service manager's SIGTERM stops the UI and its server: installed here, since a process started in
    # the background of a non-interactive shell (a CI job, `cmd &`) inherits SIGINT ignored and Python then never
    # raises KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    with serve(uri, args.host, args.port) as base:
        print(f"ui: the verdicts of {params.tracking.experiment}: {view_url(base, params.tracking.experiment)}",
              flush=True)
        print(f"ui: serving {uri} at {base} until Ctrl-C", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
