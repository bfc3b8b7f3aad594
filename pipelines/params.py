"""params.yaml: every knob of the chain, validated on load before any work starts.

A bad file is reported as one line naming the key, e.g.
`params.yaml: train.steps: must be greater than 0 (got -1)`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from cait.config import RUN_ONLY_TRAIN_KEYS, DataConfig, DeviceConfig, ModelConfig, Section, TrainConfig
from cait.errors import ConfigError
from pipelines.verdict import RULE_NAMES  # the one list of rule names

DEFAULT_PARAMS = Path("params.yaml")
RuleName = Literal[RULE_NAMES]


class ModelZooRuleConfig(Section):
    """The ModelZoo acceptance rule: pass iff signed MRE <= max_mre or signed MAE <= max_mae."""

    max_mean_relative_error: float = Field(0.05, ge=0)
    max_mean_absolute_error: float = Field(0.0002, ge=0)


class StrictRuleConfig(Section):
    """Unsigned relative errors bounded: a curve that sits consistently lower or swings around fails.
    Relative only (no absolute bound), so it does not depend on the loss's scale."""

    max_mean_abs_relative_error: float = Field(0.02, ge=0)
    judge_from_step: int = Field(0, ge=0)  # steps numbered below this are not judged
    outlier_fraction: float = Field(0.0, ge=0, lt=1)  # this fraction of the worst steps is left out of each mean


class BandRuleConfig(Section):
    """Candidate within the multi-run baseline's mean +- z*sigma, but for a fraction of steps."""

    z: float = Field(3.0, gt=0)
    max_outside_fraction: float = Field(0.05, ge=0, le=1)
    min_halfwidth_relative: float = Field(0.001, ge=0)  # floor of the band where the runs agree exactly
    judge_from_step: int = Field(0, ge=0)  # steps numbered below this are not judged


class TrendRuleConfig(Section):
    """A slow drift of the per-step difference: fails when significant (p < alpha) and large."""

    alpha: float = Field(0.01, gt=0, lt=1)
    max_drift_relative: float = Field(0.01, ge=0)  # Theil-Sen drift over the span / mean baseline loss
    judge_from_step: int = Field(0, ge=0)  # steps numbered below this are not judged


class EnvelopeRuleConfig(Section):
    """|d| <= k x envelope(t) + floor_relative x |reference| at all but max_outside_fraction of the steps;
    the envelope is measured on the reference device (pipelines/envelope.py). Values: params.yaml says
    where each comes from."""

    k: float = Field(4.0, gt=0)
    floor_relative: float = Field(1e-6, ge=0)
    max_outside_fraction: float = Field(0.0, ge=0, lt=1)


class DivergenceConfig(Section):
    """Where the curves part: |d| > max(max_relative_error * |b|, max_abs_error) for consecutive_steps in a row."""

    max_relative_error: float = Field(0.02, ge=0)
    max_abs_error: float = Field(0.0, ge=0)
    consecutive_steps: int = Field(3, gt=0)


class ThroughputRuleConfig(Section):
    """The candidate's mean samples/s over the baseline's within [min_ratio, max_ratio]: a second verdict
    (a correct port that is 10x slower is news too). A product target, not a measured tolerance: it
    informs by default, and a device of another class (a CPU against a GPU baseline) is flagged, not failed."""

    min_ratio: float = Field(0.8, gt=0)
    max_ratio: float = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio: {self.min_ratio} is above max_ratio {self.max_ratio}")
        return self


class RulesConfig(Section):
    modelzoo: ModelZooRuleConfig = ModelZooRuleConfig()
    strict: StrictRuleConfig = StrictRuleConfig()
    band: BandRuleConfig = BandRuleConfig()
    trend: TrendRuleConfig = TrendRuleConfig()
    envelope: EnvelopeRuleConfig = EnvelopeRuleConfig()
    throughput: ThroughputRuleConfig = ThroughputRuleConfig()


def _check_policy(policy):
    """gate names at least one rule, no rule twice, and no rule both gates and informs."""
    if not policy.gate:
        raise ValueError(f"gate: name at least one rule ({', '.join(RULE_NAMES)})")
    for key in ("gate", "inform"):
        names = getattr(policy, key)
        if len(set(names)) != len(names):
            raise ValueError(f"{key}: names a rule twice")
    both = sorted(set(policy.gate) & set(policy.inform))
    if both:
        raise ValueError(f"inform: {', '.join(both)} already gate(s); a rule either gates or informs")
    return policy


class ForeignPolicyConfig(Section):
    """The policy when either side is a log without a run record: two devices drew their own augmentation
    randomness, so only rules that make sense without identical inputs decide (by default the ModelZoo rule
    the model card's users accept); the others inform and explain."""

    gate: list[RuleName] = ["modelzoo"]
    inform: list[RuleName] = ["strict", "trend"]

    _policy = model_validator(mode="after")(_check_policy)

    @model_validator(mode="after")
    def _no_envelope(self):
        if "envelope" in self.gate or "envelope" in self.inform:
            raise ValueError("gate: the envelope rule needs identical inputs (the chain's keyed randomness and "
                             "shards); logs without a run record cannot use it")
        return self


class FailFastConfig(Section):
    """Stop the train stage once its verdict is certain to be `fail` (pipelines/failfast.py): only under the
    envelope rule gating with max_outside_fraction 0, where one step outside decides. Values: params.yaml."""

    enabled: bool = False
    confirm_steps: int = Field(3, ge=0)  # steps trained after the failing one before stopping


class CompareConfig(Section):
    baseline: str = "baselines/default/baseline.json"
    min_steps: int = Field(50, gt=0)  # a shorter curve proves nothing: inconclusive
    gate: list[RuleName] = ["envelope", "modelzoo"]  # rules that decide the verdict
    inform: list[RuleName] = ["strict", "band", "trend", "throughput"]  # computed and reported, do not decide
    alignment: Literal["steps", "interpolate"] = "steps"  # how curves logged at other steps are paired
    allow_negative_loss: bool = False  # below 0 is corrupt (cross-entropy never is)
    divergence: DivergenceConfig = DivergenceConfig()
    rules: RulesConfig = RulesConfig()
    foreign: ForeignPolicyConfig = ForeignPolicyConfig()  # the policy for logs without a run record
    fail_fast: FailFastConfig = FailFastConfig()  # the train stage stops once the verdict is a certain fail

    _policy = model_validator(mode="after")(_check_policy)


class LocalizeConfig(Section):
    """localize (pipelines/localize.py): an entry leaves the tolerance when its relative L2 error from the
    baseline's reference run exceeds k x the largest one of the baseline's envelope runs + floor.
    Values: params.yaml says where each comes from."""

    baseline_fingerprints: str = Field("baselines/default/fingerprints.npz", min_length=1)
    k: float = Field(16.0, gt=0)
    floor: float = Field(1e-6, ge=0)


class TrackingConfig(Section):
    enabled: bool = True
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db at the repo root
    ui_url: Optional[str] = None  # the MLflow UI's address for links (null: the tracking server, if it is one)
    experiment: str = Field("cait-acceptance", min_length=1)
    model_card_experiment: str = Field("cait-model-card", min_length=1)  # python -m pipelines.modelcard's full trainings
    flush_every: int = Field(50, gt=0)  # steps between batched metric uploads
    spool_dir: str = Field(".mlflow-spool", min_length=1)  # records kept here while the store is unreachable
    system_metrics_every_s: float = Field(10.0, ge=0)  # CPU/memory/GPU sampling during train; 0: off


class Params(Section):
    profile: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    device: DeviceConfig = DeviceConfig()
    compare: CompareConfig = CompareConfig()
    localize: LocalizeConfig = LocalizeConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _subset_has_a_size(self):
        data = self.data
        if (data.source == "imagenet" and data.shards and data.subset.enabled and data.subset.train_images is None
                and self.train.images_per_run is None):
            raise ValueError("data.subset.train_images: required when train.steps is null with ImageNet shards "
                             "(else all of ImageNet is pinned and decoded, ~190 GB); set it or train.steps")
        return self

    def curve_defining(self) -> dict:
        """The params that determine the loss curve; the device is deliberately not among them."""
        train = {k: v for k, v in self.train.model_dump(mode="json").items() if k not in RUN_ONLY_TRAIN_KEYS}
        return {"data": self.data.curve_defining(), "model": self.model.model_dump(mode="json"), "train": train}

    def curve_hash(self) -> str:
        return hash_json(self.curve_defining())

    def flat(self) -> dict[str, str]:
        """Every param as `section.key: value`, for MLflow."""
        return flatten(self.model_dump(mode="json"))


def hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def diff_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted keys where two params trees differ (NaN equals NaN), e.g. ["train.lr"]."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return [] if same else [prefix.rstrip(".")]


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, type(None), bool)) else str(value)
    return out


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-after"))
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{key}: unknown key; remove it or check its spelling"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and ":" in message.split(" ")[0]:
        # validators that name their own key: "path: required when ..."
        sub, _, rest = message.partition(": ")
        return f"{key + '.' if key else ''}{sub}: {rest}"
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or kind == "missing" else f" (got {got!r})"
    return f"{key}: {message[0].lower() + message[1:]}{shown}"


def parse_params(raw, source: str = "params.yaml") -> Params:
    """Validate a parsed params file. Through JSON, so that the strict types see lists and mappings as YAML
    wrote them (a tuple, a nested section) while a bool or a float is never taken for an int."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate_json(json.dumps(raw, default=str))
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {_describe(errors[0])}{more}") from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1, seen[key])
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> object:
    """The YAML of a params-like file, every problem a ConfigError naming the file (and line)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root or pass --params") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc.key}: given twice (lines {exc.first} and {exc.line}); keep one") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax") from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:  # an empty file would silently mean every built-in default
        raise ConfigError(f"{path}: is empty; restore it (git checkout {path}) or write its sections")
    return parse_params(raw, str(path))


def main(argv=None) -> int:
    """`python -m pipelines.params`: validate params.yaml alone (make repro runs it before dvc repro)."""
    from pipelines import cli

    args = cli.parser("validate params.yaml: one line naming the key of the first problem, exit 2").parse_args(argv)
    params = load_params(args.params)
    if not args.quiet:
        print(f"{args.params}: ok (profile {params.profile}, curve params hash {params.curve_hash()[:12]})")
    return 0


if __name__ == "__main__":
    import sys

    from pipelines import cli

    sys.exit(cli.run(main))
