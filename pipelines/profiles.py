"""Profiles beside params.yaml's own: a profile is params.yaml with the few keys of profiles/<name>.yaml changed.

  python -m pipelines.profiles sets amp            # -S profile=amp -S train.amp=bf16 ...: for `dvc exp run`
  python -m pipelines.profiles write amp PATH      # params.yaml with the profile's keys, for a stage's --params

`dvc exp run $(python -m pipelines.profiles sets amp)` runs the chain of the profile (its outputs in
reports/<profile>/, judged against baselines/<profile>/); `make baseline PROFILE=amp` records its baseline;
the benchmarks take `--profile amp`. An overlay names only keys params.yaml has (checked), so a profile never
drifts into a second copy of the params.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cait.errors import ConfigError
from pipelines import cli
from pipelines.params import DEFAULT_PARAMS, Params, parse_params

PROFILES_DIR = Path("profiles")


def overlay(name: str, root: Path = Path(".")) -> dict:
    """The keys profiles/<name>.yaml changes (nested dict)."""
    path = root / PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))
        raise ConfigError(f"{path}: no such profile; known: default (params.yaml){''.join(', ' + k for k in known)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict) or data.get("profile") != name:
        raise ConfigError(f"{path}: must be a mapping whose 'profile' is {name!r}")
    return data


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply(raw: dict, name: str, root: Path = Path("."), source: str = "params.yaml") -> dict:
    """params.yaml's raw mapping with the profile's keys set; a key params.yaml lacks is refused."""
    if name in (None, "", raw.get("profile")):
        return raw
    out = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy
    for dotted, value in flatten(overlay(name, root)).items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"{PROFILES_DIR / (name + '.yaml')}: {dotted} is not a key of {source}")
            node = node[key]
        if leaf not in node:
            raise ConfigError(f"{PROFILES_DIR / (name + '.yaml')}: {dotted} is not a key of {source}")
        node[leaf] = value
    return out


def load(name: str | None, params_path: Path = DEFAULT_PARAMS) -> Params:
    """params.yaml under the named profile, validated as params.yaml is."""
    path = Path(params_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root or pass --params") from None
    root = path.parent
    return parse_params(apply(raw, name, root, str(path)) if name else raw,
                        f"{path} (profile {name})" if name else str(path))


def dvc_sets(name: str, root: Path = Path(".")) -> list[str]:
    """`-S key=value` arguments of `dvc exp run` that make params.yaml the profile."""
    def flow(value) -> str:  # YAML flow style without spaces: the Makefile passes the arguments word-split
        if isinstance(value, list):
            return "[" + ",".join(flow(v) for v in value) + "]"
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    args = []
    for dotted, value in flatten(overlay(name, root)).items():
        args += ["-S", f"{dotted}={flow(value)}"]
    return args


def main(argv=None) -> int:
    p = cli.parser("profiles: print a profile's `dvc exp run -S` arguments or write its params file")
    sub = p.add_subparsers(dest="command", required=True)
    sets = sub.add_parser("sets", help="print -S key=value for `dvc exp run`")
    sets.add_argument("name")
    write = sub.add_parser("write", help="write params.yaml with the profile's keys to PATH")
    write.add_argument("name")
    write.add_argument("path")
    args = p.parse_args(argv)
    if args.command == "sets":
        load(args.name, Path(args.params))  # a broken overlay is a one-line error, not DVC's
        print(" ".join(dvc_sets(args.name, Path(args.params).parent)))
        return 0
    load(args.name, Path(args.params))
    from cait.files import atomic_write_text

    raw = yaml.safe_load(Path(args.params).read_text())
    atomic_write_text(Path(args.path), yaml.safe_dump(apply(raw, args.name, Path(args.params).parent), sort_keys=False))
    print(f"profiles: {args.params} under profile {args.name} -> {args.path}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli.run(main))
