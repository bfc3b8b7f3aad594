"""prepare stage: write the synthetic dataset or check an ImageNet folder, pin the subset a run
trains on, and decode it into shards.

Outputs (data/prepared/): dataset.json (the full listing), manifest.json (the pinned subset with
content hashes: what train reads and what baselines are tied to), shards/ (its pixels, uint8, at the
training resolution), scan.json (ImageNet: what the integrity scan found), and for synthetic data the
images themselves. ImageNet's images stay where data.path says: DVC does not see them, so after
changing files there rerun with `dvc repro -f prepare`: data/scan-cache/ remembers what earlier scans
found, so only new or changed files are checked again (an interrupted scan resumes the same way).
"""

from __future__ import annotations

import json
import shutil
import sys
import time

from cait.files import atomic_write_text, check_writable, replace_folder
from pipelines import cli
from pipelines.layout import DATASET, PREPARED_DIR, SCAN_CACHE_DIR, SCAN_REPORT, SHARDS_DIR
from pipelines.params import Params, load_params
from pipelines.progress import Progress


def prepare(params: Params, *, quiet: bool = False) -> None:
    """Build data/prepared in a sibling folder and swap it into place only when everything is written."""
    from cait.manifest import write_manifest
    from cait.synthetic import write_synthetic
    from cait.imagenet import scan_imagenet
    from cait.shards import build_shards, pin_subset

    data = params.data
    progress = not quiet
    img_size = params.model.resolved_img_size
    start = time.perf_counter()
    check_writable(PREPARED_DIR.parent)  # a read-only data/ stops here, before minutes of decoding
    tmp = PREPARED_DIR.with_name(PREPARED_DIR.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if data.source == "synthetic":
        syn = data.synthetic
        bar = Progress(syn.pattern.num_classes * (syn.train_per_class + syn.val_per_class),
                       "prepare synthetic images", quiet=quiet)
        full = write_synthetic(tmp, syn.pattern, seed=syn.seed, train_per_class=syn.train_per_class,
                               val_per_class=syn.val_per_class, jpeg_quality=syn.jpeg_quality, on_image=bar.update)
        bar.close()
        root_text = "."
    else:
        full, report = scan_imagenet(data.path, data.imagenet, workers=data.workers, progress=progress,
                                     cache_dir=SCAN_CACHE_DIR)
        atomic_write_text(tmp / SCAN_REPORT, json.dumps(report.to_json(), indent=1) + "\n")
        print(report.summary())
        root_text = str(full.root)
    write_manifest(full, tmp, root_text, name=DATASET)
    manifest = full
    if data.subset.enabled:
        # the asked size, else what the run draws, else (an epochs-long run) the whole train split
        train_images = data.subset.train_images or params.train.images_per_run or len(full.splits["train"])
        manifest = pin_subset(full, train_images=train_images, val_images=data.subset.val_images,
                              seed=data.subset.seed, exclude=tuple(data.imagenet.exclude), workers=data.workers,
                              progress=progress)
    write_manifest(manifest, tmp, root_text)
    shards = ""
    if data.shards:
        meta = build_shards(manifest, tmp / SHARDS_DIR.relative_to(PREPARED_DIR), img_size, workers=data.workers,
                            progress=progress)
        shards = f"; shards {img_size}px, train pixels {meta['splits']['train']['pixels_sha256'][:12]}"
    replace_folder(tmp, PREPARED_DIR)
    counts = {k: len(v) for k, v in manifest.splits.items()}
    pinned = " pinned" if data.subset.enabled else ""
    print(f"prepare: {data.source} data, {len(manifest.classes)} classes, {json.dumps(counts)}{pinned} images "
          f"in {time.perf_counter() - start:.1f} s; manifest {manifest.hash[:12]} -> {PREPARED_DIR}/manifest.json"
          f"{shards}")


def main(argv=None) -> int:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    prepare(load_params(args.params), quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
