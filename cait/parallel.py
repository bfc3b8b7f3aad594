"""Work over many files in worker processes, with a progress bar: the ImageNet scan and shard decoding."""

from __future__ import annotations

import os
import sys
from typing import Callable


def parallel_map(fn: Callable, items: list, *, workers: int | None, desc: str, progress: bool = True,
                 chunksize: int = 32) -> list:
    """`[fn(x) for x in items]` over worker processes (in order), with a progress bar on stderr."""
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, mininterval=1.0, disable=not progress,
               dynamic_ncols=True)
    try:
        if workers == 1 or len(items) < 2 * chunksize:
            out = []
            for item in items:
                out.append(fn(item))
                bar.update()
            return out
        import multiprocessing

        with multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None).Pool(workers) as pool:
            out = []
            for result in pool.imap(fn, items, chunksize=chunksize):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()
