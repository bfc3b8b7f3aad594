"""gate stage: the acceptance verdict as an exit status (0 pass, 1 fail, 3 inconclusive).

Runs after the report, so a failed night still leaves its report behind. To run the chain without
the gate failing the command: `dvc repro report`. Inside `dvc exp run` (DVC sets $DVC_EXP_NAME) the
gate prints the verdict and exits 0: an experiment is saved with its verdict whatever it is
(`dvc exp show` lists it), instead of being thrown away by a failing stage.
"""

from __future__ import annotations

import json
import os
import sys

from cait.errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS, BaselineError
from pipelines import cli
from pipelines.layout import HTML, VERDICT, run_dir
from pipelines.params import load_params

EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by DVC for every stage of `dvc exp run`
EXIT_BY_STATUS = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "inconclusive": EXIT_INCONCLUSIVE}


def main(argv=None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    path = run_dir(params.profile) / VERDICT
    try:
        verdict = json.loads(path.read_text())
        status = verdict["status"]
        code = EXIT_BY_STATUS[status]
    except FileNotFoundError:
        raise BaselineError(f"{path}: no verdict; run the compare stage first (dvc repro compare)") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise BaselineError(f"{path}: malformed verdict; rerun the compare stage (dvc repro -f compare)") from None
    stream = sys.stdout if code == EXIT_PASS else sys.stderr
    print(f"gate: {status.upper()} for profile {params.profile} (report: {run_dir(params.profile) / HTML})", file=stream)
    for reason in verdict.get("reasons", []):
        print(f"  - {reason}", file=stream)
    experiment = os.environ.get(EXPERIMENT_ENV)
    if experiment and code != EXIT_PASS:
        print(f"gate: experiment {experiment} is saved with verdict {status} (exit {code} outside `dvc exp run`)",
              file=stream)
        return EXIT_PASS
    return code


if __name__ == "__main__":
    sys.exit(cli.run(main))
