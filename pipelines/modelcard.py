"""The model card's command line with the harness: full CaiT training, tracked in MLflow.

  python -m pipelines.modelcard --model cait_S24_224 --data-path /data/imagenet --device sdaa --epochs 100 --ngpus 1 --nodes 1
  python -m pipelines.modelcard ... --ngpus 8 --nodes 2 --node-rank 0 --master-addr 10.0.0.1   # on each node

The flags, the recipe (recipes/cait_deit.yaml), the launcher and the data folder are cait/run.py's
(`python -m cait.run` is the same training without the harness); this adds the train stage's outputs:
curve.csv, train.json, run.json, timing.csv, checkpoints/ and fingerprints.npz in --output-dir and one
MLflow run in tracking.model_card_experiment (the tracking section of --params when that file exists).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from cait.run import add_arguments, recipe_sections, run_command
from pipelines import cli
from pipelines.params import Params, parse_params


def build_parser():
    return add_arguments(cli.parser(__doc__.splitlines()[0]))


def build_params(args) -> Params:
    """Recipe file + flags (+ the tracking section of --params) -> validated Params."""
    recipe = recipe_sections(args)
    tracking = {}
    params_file = Path(args.params)
    if params_file.is_file():
        tracking = (yaml.safe_load(params_file.read_text()) or {}).get("tracking") or {}
    # full trainings are not acceptance runs: they go to their own experiment
    tracking = {**tracking, "experiment": tracking.get("model_card_experiment") or "cait-model-card"}
    raw = {"profile": f"{args.model}-modelcard", **recipe, "tracking": tracking}
    return parse_params(raw, f"{args.recipe} + command line")


def train_tracked(args, params: Params, out_dir: Path, data_dir: Path) -> None:
    from pipelines.training import run_training

    run_training(params, out_dir, data_dir=data_dir, resume=args.resume)


def main(argv=None) -> int:
    return run_command(argv, build_parser(), build_params, train_tracked, "pipelines.modelcard")


if __name__ == "__main__":
    sys.exit(cli.run(main))
