"""gate stage: the acceptance verdict as an exit status (0 pass, 1 fail, 3 inconclusive).

Runs after the report, so a failed night still leaves its report behind. To run the chain without
the gate failing the command: `dvc repro report`. `--verdict PATH` gates any verdict file (one of
`compare --candidate/--baseline`, or a CI job's download).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cait.errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS, BaselineError
from pipelines import cli
from pipelines.layout import HTML, VERDICT, run_dir
from pipelines.params import load_params

EXIT_BY_STATUS = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "inconclusive": EXIT_INCONCLUSIVE}


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--verdict", type=Path, help=f"verdict to gate (default: reports/<profile>/{VERDICT})")
    args = p.parse_args(argv)
    params = load_params(args.params)
    path = args.verdict or run_dir(params.profile) / VERDICT
    try:
        verdict = json.loads(path.read_text())
        status = verdict["status"]
        code = EXIT_BY_STATUS[status]
    except FileNotFoundError:
        raise BaselineError(f"{path}: no verdict; run the compare stage first (dvc repro compare)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise BaselineError(f"{path}: malformed verdict; rerun the compare stage (dvc repro -f compare)") from None
    stream = sys.stdout if code == EXIT_PASS else sys.stderr
    report = path.parent / HTML
    where = f"report: {report}" if report.is_file() else "no report yet: python -m pipelines.stages.report"
    print(f"gate: {status.upper()} for profile {verdict.get('profile', params.profile)}, {path} ({where})",
          file=stream)
    for reason in verdict.get("reasons", []):
        print(f"  - {reason}", file=stream)
    return code


if __name__ == "__main__":
    sys.exit(cli.run(main))
