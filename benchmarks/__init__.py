"""Performance benchmarks of the harness, run by hand: `python -m benchmarks` (see benchmarks/README.md)."""
