"""preflight stage: step 0 with layer fingerprints, localized against the baseline's, before the long run.

Names in seconds the module (or phase: the optimizer update) a port computes wrongly at step 0
(pipelines/preflight.py). Writes reports/<profile>/preflight.json (status, the step, phase, entry and module
named, localize's full comparison; the same bytes for the same run, so the train stage that waits on it reruns
only when the finding changes; `train_fail_fast`: what the train stage's fail fast judges by, null when it is
off, so a new baseline retrains only with fail fast on) and reports/<profile>/preflight.run.json (the seconds it took; not a DVC
output). It informs and exits 0 whatever it finds, as localize does: the long run starts anyway, and with
compare.fail_fast on stops as soon as its loss makes the verdict a certain fail. Fingerprint files that lie
are exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cait.files import atomic_write_text
from pipelines import cli
from pipelines.layout import run_dir
from pipelines.params import load_params
from pipelines.preflight import PREFLIGHT, PREFLIGHT_RUN, fail_fast_key, run_preflight
from pipelines.provenance import file_sha256


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--out", help=f"result file (default: reports/<profile>/{PREFLIGHT})")
    args = p.parse_args(argv)
    params = load_params(args.params)
    out = Path(args.out) if args.out else run_dir(params.profile) / PREFLIGHT
    result = run_preflight(params, quiet=True)
    atomic_write_text(out, json.dumps({"schema_version": 1, **result.to_json(seconds=False),
                                       "train_fail_fast": fail_fast_key(params)}, indent=1, sort_keys=True) + "\n")
    atomic_write_text(out.with_name(PREFLIGHT_RUN) if not args.out else out.with_suffix(".run.json"),
                      json.dumps({"seconds": result.seconds, "preflight_sha256": file_sha256(out)}, indent=1) + "\n")
    print(f"preflight: {result.message} ({result.seconds:.1f} s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
