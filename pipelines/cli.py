"""The one place where errors become exit statuses: every command's `__main__` goes through `run`."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from cait.errors import EXIT_INFRA, EXIT_USAGE, HarnessError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `main`; a HarnessError becomes its one-line message on stderr and its exit status."""
    try:
        return main(argv)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; lower train.batch_size or the image size", file=sys.stderr)
        return EXIT_INFRA
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
