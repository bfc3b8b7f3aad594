"""params.yaml is validated on load: each bad value is a one-line error naming the key, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cait.errors import ConfigError
from pipelines.params import Params, load_params, parse_params

from conftest import REPO, stage_env


def test_shipped_params_yaml_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every knob is spelled out in the file, not left to a default
    assert set(raw) == set(Params.model_fields)
    for section in ("data", "model", "train", "device", "compare", "tracking"):
        assert set(raw[section]) == set(type(getattr(params, section)).model_fields), section


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        ({"train": {"stepz": 10}}, "train.stepz", "unknown key"),
        ({"colour": "blue"}, "colour", "unknown key"),
        ({"train": {"steps": 0}}, "train.steps", "greater than 0"),
        ({"train": {"steps": "many"}}, "train.steps", "integer"),
        ({"train": {"lr": -1e-3}}, "train.lr", "greater than 0"),
        ({"train": {"warmup_steps": 500}}, "train.warmup_steps", "smaller than steps"),
        ({"train": {"min_lr": 1.0}}, "train.min_lr", "must not exceed"),
        ({"model": {"name": "cait_XXL"}}, "model.name", "cait_S24_224"),
        ({"model": {"img_size": 70}}, "model.img_size", "multiple of patch_size"),
        ({"model": {"drop_path": 1.5}}, "model.drop_path", "less than 1"),
        ({"device": {"type": "tpu"}}, "device.type", "'sdaa'"),
        ({"data": {"source": "imagenet"}}, "data.path", "required"),
        ({"data": {"synthetic": {"pattern": {"label_noise": 1.0}}}}, "data.synthetic.pattern.label_noise", "[0, 1)"),
        ({"data": {"synthetic": {"pattern": {"hue": 3}}}}, "data.synthetic.pattern.hue", "unknown key"),
        ({"compare": {"gate": []}}, "compare.gate", "at least one rule"),
        ({"compare": {"gate": ["vibes"]}}, "compare.gate.0", "'modelzoo'"),
        ({"compare": {"rules": {"modelzoo": {"max_mean_relative_error": -1}}}},
         "compare.rules.modelzoo.max_mean_relative_error", "greater than or equal"),
        ({"tracking": {"enabled": "sometimes"}}, "tracking.enabled", "boolean"),
        ({"profile": "my profile"}, "profile", "pattern"),
        # nothing is coerced: a bool or a float is never an int, and a float must be finite
        ({"train": {"steps": True}}, "train.steps", "valid integer (got True)"),
        ({"train": {"steps": 1e12}}, "train.steps", "valid integer (got 1000000000000.0)"),
        ({"train": {"steps": 10**12}}, "train.steps", "less than or equal to 100000000"),
        ({"train": {"batch_size": 10**9}}, "train.batch_size", "less than or equal to"),
        ({"train": {"lr": float("inf")}}, "train.lr", "finite number"),
        ({"train": {"min_lr": float("nan")}}, "train.min_lr", "finite number"),
        ({"compare": {"rules": {"band": {"z": float("inf")}}}}, "compare.rules.band.z", "finite number"),
        ({"data": {"synthetic": {"pattern": {"num_classes": True}}}}, "data.synthetic.pattern.num_classes",
         "valid integer"),
        ({"data": {"synthetic": {"pattern": {"noise_std": float("inf")}}}}, "data.synthetic.pattern.noise_std",
         "finite number"),
        ({"device": {"deterministic": 1}}, "device.deterministic", "valid boolean"),
        ({"data": {"source": "imagenet", "path": "/x"}, "train": {"steps": None}}, "data.subset.train_images",
         "required when train.steps is null"),
    ],
)
def test_invalid_values_name_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        parse_params(overrides)
    message = str(err.value)
    assert message.startswith(f"params.yaml: {key}: "), message
    assert words in message
    assert "\n" not in message


def test_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(path)


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  steps: 3\n bad indent: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d"):
        load_params(path)


def test_yaml_values_as_written_still_read(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1\n  steps: null\n  augment:\n    crop_scale: [0.5, 1]\n")
    params = load_params(path)
    assert params.train.lr == 1.0 and params.train.steps is None and params.train.augment.crop_scale == (0.5, 1.0)
    assert params.train.images_per_run is None  # an epochs-long run: prepare pins every train image


def test_duplicate_key_names_the_key_and_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.001\n  steps: 10\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: lr: given twice (lines 2 and 4); keep one"


def test_empty_file_is_refused_not_defaulted(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# every knob commented out\n")
    with pytest.raises(ConfigError, match=r"params.yaml: is empty; restore it"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_hash_ignores_device_and_tracking():
    a = parse_params({})
    b = parse_params({"device": {"threads": 1}, "tracking": {"enabled": False}, "compare": {"min_steps": 7}})
    c = parse_params({"train": {"seed": 1}})
    assert a.curve_hash() == b.curve_hash()
    assert a.curve_hash() != c.curve_hash()


def test_stage_exits_2_with_one_line_before_any_work(project):
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("steps: 120", "steps: -5"))
    for stage in ("prepare", "train", "compare", "report", "gate"):
        result = subprocess.run([sys.executable, "-m", f"pipelines.stages.{stage}"], cwd=project,
                                env=stage_env(project), capture_output=True, text=True)
        assert result.returncode == 2, (stage, result.stderr)
        assert result.stderr.strip() == "error: params.yaml: train.steps: input should be greater than 0 (got -5)"
    assert not (project / "data" / "prepared").exists()
    assert not (project / "mlflow.db").exists()


def test_make_repro_checks_params_before_dvc(project):
    """DVC reads params.yaml itself and reports a broken one in its own words (exit 255); `make repro` runs
    `python -m pipelines.params` first, so the user gets the one line naming the key, exit 2."""
    path = project / "params.yaml"
    path.write_text(path.read_text() + "profile: other\n")
    env = stage_env(project)
    dvc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert dvc.returncode == 255 and "duplicate key" in dvc.stderr  # what DVC alone says
    check = subprocess.run([sys.executable, "-m", "pipelines.params"], cwd=project, env=env, capture_output=True,
                           text=True)
    assert check.returncode == 2
    assert check.stderr.strip().startswith("error: params.yaml: profile: given twice (lines ")
    # -o: take the virtual environment as made (the test's own interpreter is first on PATH)
    made = subprocess.run(["make", "-o", ".venv/.installed", "repro"], cwd=project, env=env, capture_output=True,
                          text=True)
    assert made.returncode == 2, made.stdout + made.stderr
    assert "error: params.yaml: profile: given twice" in made.stderr
    assert "dvc repro" not in made.stdout.replace("python -m pipelines.params", "")
    assert not (project / "data" / "prepared").exists()
