"""Command-line entry points: the five DVC stages (prepare, train, compare, report, gate) and the
baseline command. Each reads files and writes files; run as `python -m pipelines.stages.<name>`."""
