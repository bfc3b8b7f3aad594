"""gate stage: the acceptance verdict as an exit status (0 pass, 1 fail, 3 inconclusive).

Runs after the report, so a failed night still leaves its report behind. To run the chain without
the gate failing the command: `dvc repro report`. `--verdict PATH` gates any verdict file (one of
`compare --candidate/--baseline`, or a CI job's download). Inside `dvc exp run` (DVC sets $DVC_EXP_NAME) the
gate prints the verdict and exits 0: an experiment is saved with its verdict whatever it is
(`dvc exp show` lists it), instead of being thrown away by a failing stage.

A verdict only counts for the files it judged: when the curve, run record or baseline it names (by
SHA-256) is gone or changed, or the compare params changed, or report.html shows another verdict, the
verdict is stale and the gate exits 3 with the reason (e.g. after a killed train stage, whose old
verdict.json and report.html stay behind). A missing, old or malformed verdict is exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cait.errors import EXIT_PASS
from pipelines import cli
from pipelines.layout import EXPERIMENT_ENV, HTML, LOCALIZE, VERDICT, run_dir
from pipelines.params import load_params
from pipelines.verdict_file import (EXIT_BY_STATUS, read_verdict, report_command, require_fresh, require_report_of,
                                   unchecked_inputs)


def localization_line(path: Path) -> str:
    """localize's one line (which module or phase parts first), when the localize stage wrote one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return str(data.get("message", "")) if data.get("status") in ("diverged", "clean") else ""


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--verdict", type=Path, help=f"verdict file to gate on (default: reports/<profile>/{VERDICT}; "
                                                f"e.g. reports/logs/{VERDICT} of a comparison of logs)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    verdict = read_verdict(args.verdict or run_dir(params.profile) / VERDICT)
    require_fresh(verdict, params.compare.model_dump())
    report = verdict.path.parent / HTML
    has_report = require_report_of(verdict, report)
    code = EXIT_BY_STATUS[verdict.status]
    stream = sys.stdout if code == EXIT_PASS else sys.stderr
    where = f"report: {report}" if has_report else f"no report rendered yet: {report_command(verdict)}"
    print(f"gate: {verdict.status.upper()} for profile {verdict.profile} ({where})", file=stream)
    for reason in verdict.reasons:
        print(f"  - {reason}", file=stream)
    where = localization_line(verdict.path.parent / LOCALIZE) if code != EXIT_PASS else ""
    if where:
        print(f"  where: {where}", file=stream)
    for name in unchecked_inputs(verdict):
        print(f"  note: {name} is not a file; the gate could not recheck it", file=stream)
    experiment = os.environ.get(EXPERIMENT_ENV)
    if experiment and code != EXIT_PASS:
        print(f"gate: experiment {experiment} is saved with verdict {verdict.status} (exit {code} outside `dvc exp run`)",
              file=stream)
        return EXIT_PASS
    return code


if __name__ == "__main__":
    sys.exit(cli.run(main))
