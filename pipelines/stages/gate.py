"""gate stage: the acceptance verdict as an exit status (0 pass, 1 fail, 3 inconclusive).

Runs after the report, so a failed night still leaves its report behind. To run the chain without
the gate failing the command: `dvc repro report`. `--verdict PATH` gates any verdict file (one of
`compare --candidate/--baseline`, or a CI job's download). Inside a running `dvc exp run` (checked on disk, not
only by $DVC_EXP_NAME: `running_experiment`) the gate prints the verdict and exits 0: an experiment is saved with
its verdict whatever it is (`dvc exp show` lists it), instead of being thrown away by a failing stage.

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

# Where `dvc exp run` keeps its running executors' info files, under the workspace's .dvc/tmp/exps: the workspace
# and celery queues in run/<name>/<name>.run, `--temp` in standalone/run/<rev>/<rev>.run (dvc/repo/experiments:
# utils.EXEC_TMP_DIR, EXEC_PID_DIR, queue/tempdir.py, executor/base.py INFOFILE_EXT)
EXPERIMENT_INFO_GLOBS = (".dvc/tmp/exps/run/*/*.run", ".dvc/tmp/exps/standalone/run/*/*.run")
TASK_RUNNING = 2  # dvc.repo.experiments.executor.base.TaskStatus.RUNNING


def running_experiment(env=os.environ, cwd: Path | None = None) -> str:
    """The name of the `dvc exp run` this process is a stage of, or "" when it is none.

    An environment variable alone proves nothing (any CI job can set one). What DVC itself does for an
    experiment (dvc/repo/experiments/queue/base.py, executor/base.py, stage/run.py): it gives every stage
    DVC_EXP_NAME (the experiment's name) and DVC_ROOT (the workspace, also for `--temp`, whose stages run in a
    copy under DVC_ROOT/.dvc/tmp/exps/standalone/tmpXXXX), and while the experiment runs it keeps an executor info file
    (JSON: name, root_dir = the folder the stages run in, status 2 = RUNNING) under DVC_ROOT/.dvc/tmp/exps,
    removed when it ends. So this is an experiment only when that file exists, names this experiment, says
    RUNNING, and its root_dir holds the current folder."""
    name, root = env.get(EXPERIMENT_ENV, ""), env.get("DVC_ROOT", "")
    if not name or not root:
        return ""
    here = (cwd or Path.cwd()).resolve()
    for pattern in EXPERIMENT_INFO_GLOBS:
        for info_file in Path(root).glob(pattern):
            try:
                info = json.loads(info_file.read_text())
                runs_in = Path(info["root_dir"]).resolve()
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if info.get("name") == name and info.get("status") == TASK_RUNNING and (
                    here == runs_in or runs_in in here.parents):
                return name
    return ""


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
    if code != EXIT_PASS and os.environ.get(EXPERIMENT_ENV):
        experiment = running_experiment()
        if not experiment:
            print(f"gate: ${EXPERIMENT_ENV} is set but no `dvc exp run` of that name is running here (no executor "
                  f"info under $DVC_ROOT/.dvc/tmp/exps): exit {code}", file=stream)
            return code
        print(f"gate: {verdict.status.upper()}: experiment {experiment} is saved with verdict {verdict.status} "
              f"(exit {code} outside `dvc exp run`)", file=stream)
        return EXIT_PASS
    return code


if __name__ == "__main__":
    sys.exit(cli.run(main))
