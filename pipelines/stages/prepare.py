"""prepare stage: write the synthetic dataset, or check an ImageNet folder, and write the manifest.

Output: data/prepared/manifest.json (+ the synthetic images, in the ImageNet layout).
"""

from __future__ import annotations

import json
import shutil
import sys
import time

from cait.data import scan_imagenet, write_manifest, write_synthetic
from pipelines import cli
from pipelines.layout import PREPARED_DIR
from pipelines.params import load_params
from pipelines.progress import Progress


def main(argv=None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    data = params.data
    start = time.perf_counter()
    if data.source == "synthetic":
        syn = data.synthetic
        total = syn.pattern.num_classes * (syn.train_per_class + syn.val_per_class)
        progress = Progress(total, "prepare synthetic images", quiet=args.quiet)
        manifest = write_synthetic(PREPARED_DIR, syn.pattern, seed=syn.seed, train_per_class=syn.train_per_class,
                                   val_per_class=syn.val_per_class, jpeg_quality=syn.jpeg_quality,
                                   on_image=progress.update)
        progress.close()
    else:
        manifest = scan_imagenet(data.path)
        tmp = PREPARED_DIR.with_name(PREPARED_DIR.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_manifest(manifest, tmp, str(manifest.root))
        shutil.rmtree(PREPARED_DIR, ignore_errors=True)
        tmp.rename(PREPARED_DIR)
    counts = {k: len(v) for k, v in manifest.splits.items()}
    print(f"prepare: {data.source} data, {len(manifest.classes)} classes, {json.dumps(counts)} images "
          f"in {time.perf_counter() - start:.1f} s; manifest {manifest.hash[:12]} -> {PREPARED_DIR}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
