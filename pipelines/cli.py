"""The one place where errors become exit statuses: every command's `__main__` goes through `run`.

Exit statuses, the same for every command (the nightly CI relies on them):

  0  pass (or, for commands that give no verdict, success)
  1  fail: the candidate's loss curve does not match the baseline (gate, summary)
  2  usage or input error: bad params.yaml or arguments, missing or malformed data, curve, baseline
  3  inconclusive: the comparison proves nothing (too few steps, non-finite loss, a baseline made
     under other conditions, a stale verdict whose inputs changed since); CI treats it as a failure
  4  infrastructure error: the device or its plugin is unavailable, the tracking store is corrupt or
     its spool cannot be written, an output file cannot be written (disk full, read-only), out of
     memory, or an unexpected crash (with its traceback) - never mistaken for a fail
130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Sequence

from cait.errors import EXIT_INFRA, EXIT_USAGE, HarnessError

QUIET_ENV = "CAIT_QUIET"  # set to 1 to make every stage quiet, e.g. under `dvc repro`


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-q", "--quiet", action="store_true", default=os.environ.get(QUIET_ENV, "") not in ("", "0"),
                   help=f"no progress bars or per-step lines, only results and errors (or set {QUIET_ENV}=1)")
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
    except OSError as exc:
        if exc.filename is None:
            return _crash(exc)
        # a file the code did not expect to fail on (outputs go through cait.files, which names them itself)
        print(f"error: {exc.filename}: {exc.strerror or exc} (errno {exc.errno}); check the disk and that folder, "
              f"then rerun (exit {EXIT_INFRA}: infrastructure)", file=sys.stderr)
        return EXIT_INFRA
    except Exception as exc:  # a crash (device runtime error, bug) must not read as exit 1, "fail"
        return _crash(exc)


def _crash(exc: Exception) -> int:
    traceback.print_exc()
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    print(f"error: unexpected {exc.__class__.__name__}: {first} (exit {EXIT_INFRA}: infrastructure); the traceback "
          f"above says where", file=sys.stderr)
    return EXIT_INFRA
