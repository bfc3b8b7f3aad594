"""The model card's command line: full CaiT training, one card or several nodes of several cards.

  python -m cait.run --model cait_S24_224 --data-path /data/imagenet --device sdaa --epochs 100 --ngpus 1 --nodes 1
  python -m cait.run ... --ngpus 8 --nodes 2 --node-rank 0 --master-addr 10.0.0.1   # on each node

Starts from the full DeiT/CaiT recipe (recipes/cait_deit.yaml); flags override it. With ngpus x nodes
> 1 it launches itself once per card through torchrun's launcher (torch.distributed.elastic); under
torchrun or srun it is one rank. --data-path is a prepared folder holding manifest.json (the synthetic
data of `dvc repro prepare`: data/prepared) or an ImageNet root with train/ and val/. Writes curve.csv,
train.json, checkpoints/{last,best}.pt into --output-dir and one MLflow run (tracking section of
--params when that file exists).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import yaml

from cait.distributed import RankFailure, process_env
from cait.errors import ConfigError

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "cait_deit.yaml"


def build_parser():
    from pipelines import cli

    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="DeiT name of the CaiT variant, e.g. cait_S24_224")
    p.add_argument("--data-path", required=True, help="prepared folder with manifest.json, or an ImageNet root")
    p.add_argument("--device", choices=("cpu", "cuda", "sdaa"), help="device type (recipe: cuda)")
    p.add_argument("--epochs", type=int, help="epochs of the schedule (recipe: 400)")
    p.add_argument("--steps", type=int, help="stop after this many steps (ModelZoo's short acceptance run)")
    p.add_argument("--batch-size", type=int, help="per card (recipe: 64)")
    p.add_argument("--lr", type=float, help="base learning rate, scaled by global batch / 512 (recipe: 5e-4)")
    p.add_argument("--img-size", type=int, help="input resolution (default: the variant's)")
    p.add_argument("--num-workers", type=int, help="loader processes per card")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision")
    p.add_argument("--deterministic", action="store_true", help="deterministic numerics (slower)")
    p.add_argument("--seed", type=int)
    p.add_argument("--ngpus", type=int, default=1, help="processes (cards) per node")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes")
    p.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0 .. nodes-1")
    p.add_argument("--master-addr", default="127.0.0.1", help="address of the node with rank 0")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--recipe", default=str(RECIPE), help="recipe file (model/train/device sections)")
    p.add_argument("--output-dir", help="where the run's files go (default: runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last.pt")
    return p


def build_params(args):
    """Recipe file + flags (+ the tracking section of --params) -> validated Params."""
    from pipelines.params import parse_params

    try:
        recipe = yaml.safe_load(Path(args.recipe).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{args.recipe}: recipe file not found; pass --recipe") from None
    except yaml.YAMLError:
        raise ConfigError(f"{args.recipe}: not valid YAML; fix the syntax") from None
    recipe = {k: dict(recipe.get(k) or {}) for k in ("model", "train", "device")}
    recipe["model"]["name"] = args.model
    overrides = {("train", "epochs"): args.epochs, ("train", "steps"): args.steps,
                 ("train", "batch_size"): args.batch_size, ("train", "lr"): args.lr, ("model", "img_size"): args.img_size,
                 ("train", "num_workers"): args.num_workers, ("train", "amp"): args.amp, ("train", "seed"): args.seed,
                 ("device", "type"): args.device}
    for (section, key), value in overrides.items():
        if value is not None:
            recipe[section][key] = value
    if args.deterministic:
        recipe["device"]["deterministic"] = True
    tracking = {}
    params_file = Path(args.params)
    if params_file.is_file():
        tracking = (yaml.safe_load(params_file.read_text()) or {}).get("tracking") or {}
    # full trainings are not acceptance runs: they go to their own experiment
    tracking = {**tracking, "experiment": tracking.get("model_card_experiment") or "cait-model-card"}
    raw = {"profile": f"{args.model}-modelcard", **recipe, "tracking": tracking}
    return parse_params(raw, f"{args.recipe} + command line")


def data_folder(data_path: str, out_dir: Path, *, scanned: bool = False) -> Path:
    """A folder with manifest.json for the data: the given one, or a manifest scanned from an ImageNet root
    into out_dir/data (`scanned`: the launcher already did that, the ranks reuse it)."""
    from cait.config import ImageNetConfig
    from cait.manifest import MANIFEST_NAME, write_manifest
    from cait.imagenet import scan_imagenet

    path = Path(data_path).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return path
    folder = out_dir / "data"
    if scanned and (folder / MANIFEST_NAME).is_file():
        return folder
    manifest, report = scan_imagenet(path, ImageNetConfig())  # a full ILSVRC2012 layout, checked and scanned
    print(report.summary(), flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, folder, str(manifest.root))
    return folder


def launch(args, argv: list[str]) -> int:
    """Start ngpus processes on this node through torch's elastic launcher (what torchrun runs).

    A rank that dies makes the launcher stop the others at once; the failure is reported as one line
    naming the rank and how it ended.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=args.nodes, max_nodes=args.nodes, nproc_per_node=args.ngpus,
                          run_id=os.environ.get("SLURM_JOB_ID", f"cait-{uuid.uuid4().hex[:8]}"),
                          rdzv_backend="static", rdzv_endpoint=f"{args.master_addr}:{args.master_port}",
                          rdzv_configs={"rank": args.node_rank, "timeout": 900}, max_restarts=0,
                          monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "cait.run", *argv)
    except ChildFailedError as exc:
        # the rank that died first (by a signal, if any did) is the cause; the others failed after it
        rank, failure = min(exc.failures.items(), key=lambda kv: (kv[1].exitcode >= 0, kv[1].timestamp))
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        others = len(exc.failures) - 1
        raise RankFailure(f"rank {rank} (pid {failure.pid}) died with {how}; the launcher stopped the other "
                          f"rank(s){f' ({others} more failed)' if others else ''}; see that rank's error above; "
                          f"if a checkpoint was written, --resume continues from it") from None
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.ngpus < 1 or args.nodes < 1 or not 0 <= args.node_rank < args.nodes:
        raise ConfigError(f"--ngpus {args.ngpus} --nodes {args.nodes} --node-rank {args.node_rank}: need ngpus >= 1, "
                          f"nodes >= 1 and 0 <= node-rank < nodes")
    params = build_params(args)  # fail on a bad flag before any process starts
    out_dir = Path(args.output_dir or f"runs/{args.model}")
    _, world_size, _ = process_env()
    if args.ngpus * args.nodes > 1 and world_size == 1:
        data_folder(args.data_path, out_dir)  # scan ImageNet once, before the ranks start
        return launch(args, argv)
    from pipelines.stages.train import run_training

    data_dir = data_folder(args.data_path, out_dir, scanned=world_size > 1)
    run_training(params, out_dir, data_dir=data_dir, resume=args.resume)
    return 0


if __name__ == "__main__":
    from pipelines import cli

    sys.exit(cli.run(main))
