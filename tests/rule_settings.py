"""The rules' settings for tests, from the config models: their defaults live in pipelines/params.py only."""

from __future__ import annotations

from pipelines.params import CompareConfig


def rule_settings(**overrides: dict) -> dict:
    """Every settings keyword `decide` takes (compare.rules.<rule> and compare.divergence) at their defaults;
    a rule named in `overrides` takes the keys given over its defaults, validated by its config model."""
    compare = CompareConfig()
    sections = {name: getattr(compare.rules, name) for name in type(compare.rules).model_fields}
    sections["divergence"] = compare.divergence
    return {name: type(cfg)(**{**cfg.model_dump(), **overrides.get(name, {})}).model_dump()
            for name, cfg in sections.items()}
