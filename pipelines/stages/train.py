"""train stage: a short CaiT run of train.steps steps on the chosen device, tracked in MLflow.

Outputs: reports/<profile>/curve.csv (step, loss, lr, batch_hash), reports/<profile>/train.json
(environment, numerics settings, params hash, data manifest hash, the curve's SHA-256), beside them
run.json and timing.csv (MLflow ids, date, wall time, throughput, git commit, host; per-step samples/s:
what differs between two runs of the same curve, so not DVC outputs) and reports/<profile>/checkpoints/ (when train.checkpoint_every is set, on SIGTERM, each epoch in
full training mode). A run that fails or is stopped keeps the steps it trained in curve.partial.csv
(not a DVC output): curve.csv is only ever a finished run's curve. `--resume` continues from checkpoints/last.pt. Runs as one process or under torchrun.
Prints one ModelZoo-style (tcap_dllogger) line per step (pipelines/logs.py, which also reads them back),
so existing ModelZoo tooling reads our runs. With data.shards the run reads the prepare stage's
pre-decoded pixels (no JPEG decoded), and their hash goes into the record. With compare.fail_fast on it
stops once its verdict is a certain fail (pipelines/failfast.py): train.json's stopped_early says where and why.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines import cli
from pipelines.layout import METRICS, run_dir
from pipelines.params import load_params
from pipelines.training import run_training


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--out-dir", help="where to write curve.csv and train.json (default: reports/<profile>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out-dir>/checkpoints/last.pt (written with the same params)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    out = Path(args.out_dir) if args.out_dir else run_dir(params.profile)
    # the verdict's flat figures describe the curve this run replaces: gone while it trains, so `dvc exp show`
    # (which reads a running experiment's folder) never lists it with the previous verdict; compare writes them anew
    if out.is_dir():  # (a folder that cannot be written is run_training's one-line error, before any work)
        (out / METRICS).unlink(missing_ok=True)
    run_training(params, out, resume=args.resume, quiet=args.quiet, fail_fast=True)  # compare.fail_fast decides
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
