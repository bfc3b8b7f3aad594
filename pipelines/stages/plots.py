"""plots command: `dvc plots show` (or `diff`) rendered without the internet.

DVC's default plots page loads vega from a CDN. This command gives `dvc plots` a page template that
carries vega, vega-lite and vega-embed inline (bundled by vl-convert, cached in .dvc/tmp/), and also
renders each vega plot to SVG and PNG (vl-convert, no browser), for CI artifacts and e-mail:

  python -m pipelines.stages.plots                 # workspace -> reports/plots/index.html, *.svg, *.png
  python -m pipelines.stages.plots --diff main     # the overlay against another git revision

The image plots of dvc.yaml (the report's overlay.png) need no scripts and show offline either way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from cait.errors import ConfigError, HarnessError
from cait.files import atomic_write_bytes, atomic_write_text
from pipelines import cli

TEMPLATE_DIR = Path(".dvc/tmp")
OUT_DIR = Path("reports/plots")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots (offline)</title>
<script type="text/javascript">
{bundle}
</script>
<style>table {{ border-spacing: 15px; }} body {{ font-family: system-ui, sans-serif; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


class PlotsError(HarnessError):
    """`dvc plots` failed or its output could not be rendered."""


def offline_template(folder: Path = TEMPLATE_DIR) -> Path:
    """A dvc-render page template holding the vega scripts inline; built once per vl-convert version."""
    try:
        import vl_convert
    except ImportError:
        raise ConfigError("vl-convert-python is not installed; `pip install -e .` installs it") from None
    path = folder / f"plots-offline-vl{vl_convert.__version__}.html"
    if not path.is_file():
        # the default bundle defines window.vegaEmbed, which dvc's plot divs call
        bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
        atomic_write_text(path, PAGE.format(bundle=bundle))
    return path


def _dvc(args: list[str]) -> str:
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    done = subprocess.run([dvc, "plots", *args], capture_output=True, text=True)
    if done.returncode:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise PlotsError(f"`dvc plots {' '.join(args)}` failed: {detail[-1] if detail else done.returncode}; "
                         f"run the chain first (dvc repro report)")
    return done.stdout


def render_static(specs: dict, out: Path) -> list[Path]:
    """Every vega plot in `dvc plots ... --json` output as <name>.svg and <name>.png."""
    import vl_convert

    written = []
    for name, plots in specs.items():
        for i, plot in enumerate(p for p in plots if p.get("type") == "vega"):
            stem = name.replace("/", "_").replace("\\", "_") + (f"_{i}" if i else "")
            svg = out / f"{stem}.svg"
            atomic_write_text(svg, vl_convert.vegalite_to_svg(plot["content"]))
            png = out / f"{stem}.png"
            atomic_write_bytes(png, vl_convert.vegalite_to_png(plot["content"], scale=2))
            written += [svg, png]
    return written


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT_DIR), help=f"output folder (default: {OUT_DIR})")
    p.add_argument("--diff", nargs="+", metavar="REV", help="compare with these git revisions (dvc plots diff)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = ["diff", *args.diff] if args.diff else ["show"]
    template = offline_template()
    _dvc([*command, "--html-template", str(template), "-o", str(out)])
    raw = _dvc([*command, "--json"])
    try:
        specs = json.loads(raw)["data"]
    except (json.JSONDecodeError, KeyError):
        raise PlotsError("`dvc plots --json` gave output this command does not understand; check the dvc version") from None
    written = render_static(specs, out)
    print(f"plots: {out / 'index.html'} (offline page)" + "".join(f", {p}" for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
