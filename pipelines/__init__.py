"""The acceptance harness: DVC stage entry points (`pipelines.stages`), curves, verdict rules,
baselines, MLflow tracking and reports. Each stage reads files and writes files."""
