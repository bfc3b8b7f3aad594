"""The model card's command line without the harness: full CaiT training, one card or several nodes.

  python -m cait.run --model cait_S24_224 --data-path /data/imagenet --device sdaa --epochs 100 --ngpus 1 --nodes 1
  python -m cait.run ... --ngpus 8 --nodes 2 --node-rank 0 --master-addr 10.0.0.1   # on each node

Starts from the full DeiT/CaiT recipe (recipes/cait_deit.yaml); flags override it. With ngpus x nodes
> 1 it launches itself once per card through torchrun's launcher (torch.distributed.elastic); under
torchrun or srun it is one rank. --data-path is a prepared folder holding manifest.json (the synthetic
data of `dvc repro prepare`: data/prepared) or an ImageNet root with train/ and val/. Trains through
cait's session (cait/session.py): checkpoints/{last,best}.pt and fingerprints.npz into --output-dir,
one line per step. `python -m pipelines.modelcard` (same flags, + --params) is the same command with the
harness: curve.csv, train.json and an MLflow run; it reuses this module's parser, launcher and data
folder (`run_command`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from cait.distributed import RankFailure, process_env
from cait.errors import ConfigError, DataError, HarnessError

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "cait_deit.yaml"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model card's flags (shared with pipelines/modelcard.py)."""
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


QUIET_ENV = "CAIT_QUIET"  # as every harness command (pipelines/cli.py)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cait.run", description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", default=os.environ.get(QUIET_ENV, "") not in ("", "0"),
                   help=f"no per-step lines, only results and errors (or set {QUIET_ENV}=1)")
    return add_arguments(p)


def recipe_sections(args) -> dict:
    """The recipe file's model/train/device sections with the flags applied (plain dicts, not yet validated)."""
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
    return recipe


def build_configs(args) -> dict:
    """Recipe file + flags -> validated cait settings: {"data", "model", "train", "device"}."""
    from pydantic import ValidationError

    from cait.config import DataConfig, DeviceConfig, ModelConfig, TrainConfig

    recipe = recipe_sections(args)
    configs = {"data": DataConfig()}  # the prepared folder's own data (shards when it has them), as in the harness
    for section, kind in (("model", ModelConfig), ("train", TrainConfig), ("device", DeviceConfig)):
        try:
            configs[section] = kind.model_validate_json(json.dumps(recipe[section], default=str))
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in (section, *error["loc"]))
            raise ConfigError(f"{args.recipe} + command line: {key}: {error['msg']}") from None
    return configs


def data_folder(data_path: str, out_dir: Path, *, scanned: bool = False) -> Path:
    """A folder with manifest.json for the data: the given one, or a manifest scanned from an ImageNet root
    into out_dir/data (`scanned`: the launcher already did that, the ranks reuse it)."""
    from cait.config import ImageNetConfig
    from cait.manifest import MANIFEST_NAME, write_manifest
    from cait.imagenet import scan_imagenet

    path = Path(data_path).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return path
    if not path.is_dir():  # named as the flag it came from (the scan's own message names params.yaml's data.path)
        raise DataError(f"--data-path {path}: not a folder; pass a prepared folder holding {MANIFEST_NAME} or an "
                        f"ImageNet root holding train/ and val/")
    folder = out_dir / "data"
    if scanned and (folder / MANIFEST_NAME).is_file():
        return folder
    manifest, report = scan_imagenet(path, ImageNetConfig())  # a full ILSVRC2012 layout, checked and scanned
    print(report.summary(), flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, folder, str(manifest.root))
    return folder


def launch(args, argv: list[str], module: str = "cait.run") -> int:
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
        elastic_launch(config, sys.executable)("-u", "-m", module, *argv)
    except ChildFailedError as exc:
        # the rank that died first (by a signal, if any did) is the cause; the others failed after it
        rank, failure = min(exc.failures.items(), key=lambda kv: (kv[1].exitcode >= 0, kv[1].timestamp))
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        others = len(exc.failures) - 1
        raise RankFailure(f"rank {rank} (pid {failure.pid}) died with {how}; the launcher stopped the other "
                          f"rank(s){f' ({others} more failed)' if others else ''}; see that rank's error above; "
                          f"if a checkpoint was written, --resume continues from it") from None
    return 0


def run_command(argv: list[str] | None, parser: argparse.ArgumentParser, configure: Callable[[Any], Any],
                train: Callable[[Any, Any, Path, Path], None], module: str) -> int:
    """The command: flags -> settings (`configure`, before any process starts), ImageNet scanned once,
    the launcher for several processes (re-running `module` per rank), else `train(args, settings, out_dir,
    data_dir)` as this process's rank."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.ngpus < 1 or args.nodes < 1 or not 0 <= args.node_rank < args.nodes:
        raise ConfigError(f"--ngpus {args.ngpus} --nodes {args.nodes} --node-rank {args.node_rank}: need ngpus >= 1, "
                          f"nodes >= 1 and 0 <= node-rank < nodes")
    settings = configure(args)  # fail on a bad flag before any process starts
    out_dir = Path(args.output_dir or f"runs/{args.model}")
    _, world_size, _ = process_env()
    if args.ngpus * args.nodes > 1 and world_size == 1:
        data_folder(args.data_path, out_dir)  # scan ImageNet once, before the ranks start
        return launch(args, argv, module)
    data_dir = data_folder(args.data_path, out_dir, scanned=world_size > 1)
    train(args, settings, out_dir, data_dir)
    return 0


def train_untracked(args, configs: dict, out_dir: Path, data_dir: Path) -> None:
    """One rank of the training through cait's session: checkpoints and fingerprints, a line per step."""
    from cait.session import Callbacks, run_session

    def on_step(row: dict) -> None:
        if rank_zero and not getattr(args, "quiet", False):
            print(f"step {row['step']} loss {row['loss']:.4f} lr {row['lr']:.6g} "
                  f"samples/s {row['samples_per_s']:.1f}", flush=True)

    def on_epoch(metrics: dict) -> None:
        print(f"Epoch[{metrics['epoch']}]: val_loss {metrics['val_loss']:.4f} acc1 {metrics['top1']:.2f} "
              f"acc5 {metrics['top5']:.2f} ({metrics['val_images']} images)", flush=True)

    rank_zero = process_env()[0] == 0
    # what a resumed checkpoint must have been written with: the model and the recipe (the harness hashes
    # its curve-defining params instead)
    from cait.config import RUN_ONLY_TRAIN_KEYS

    train = {k: v for k, v in configs["train"].model_dump(mode="json").items() if k not in RUN_ONLY_TRAIN_KEYS}
    hash_of = json.dumps({"model": configs["model"].model_dump(mode="json"), "train": train}, sort_keys=True)
    result = run_session(configs["data"], configs["model"], configs["train"], configs["device"], data_dir=data_dir,
                         out_dir=out_dir, params_hash=hashlib.sha256(hash_of.encode()).hexdigest(),
                         callbacks=Callbacks(on_step=on_step, on_epoch=on_epoch), resume=args.resume)
    if result.fingerprint_path is not None:
        rows, summary = result.rows, result.summary
        loss = f"; loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}" if rows else ""
        print(f"train: {summary.steps_done} steps x{result.session.ctx.world_size} in {summary.wall_s:.1f} s{loss}; "
              f"checkpoints in {out_dir}", flush=True)


def main(argv=None) -> int:
    return run_command(argv, build_parser(), build_configs, train_untracked, "cait.run")


def run(main_fn: Callable[[list[str] | None], int]) -> int:
    """A HarnessError becomes its one-line message on stderr and its exit status (pipelines/cli.py does the
    same, with more cases, for the harness's commands)."""
    try:
        return main_fn(None)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(run(main))
