"""Checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint holds the model, optimizer, AMP scaler and EMA states, the global RNG states, the
sampler's position (the next step), the curve rows so far and the best evaluation, plus the params
hash of the run that wrote it. It is written atomically (temp file + rename) and read with
`torch.load(weights_only=True)`: plain tensors and containers only, no pickled code. A file that
cannot be read, or one written with other curve-defining params, is a CheckpointError: never a
silent fresh start.
"""

from __future__ import annotations

import random
from pathlib import Path

from cait.errors import HarnessError
from cait.files import atomic_output

FORMAT = "cait-harness-checkpoint"
VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(HarnessError):
    """A checkpoint that cannot be used to resume this run."""


def rng_states() -> dict:
    """The global generators' states (nothing in the training path draws from them; saved all the same)."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, cached],
            "python": [version, list(py_state), gauss]}


def restore_rng_states(states: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = states["python"]
    random.setstate((version, tuple(py_state), gauss))


def save_checkpoint(path: Path | str, state: dict) -> Path:
    """Write `state` (see `train.TrainState.checkpoint`) atomically; returns the path."""
    import torch

    with atomic_output(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    return Path(path)


def load_checkpoint(path: Path | str, params_hash: str | None = None) -> dict:
    """Read a checkpoint safely; check it is ours, complete, and (if given) written with `params_hash`."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from; run without --resume to start fresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({detail}); delete it and resume from "
                              f"another, or start fresh without --resume") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cait-harness checkpoint; resume needs one this harness wrote")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')} (this harness reads "
                              f"{VERSION}); resume with the harness version that wrote it")
    missing = [k for k in ("step", "params_hash", "model", "optimizer", "rows") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing)}); start fresh")
    if params_hash is not None and state["params_hash"] != params_hash:
        raise CheckpointError(f"{path}: written by a run with other curve-defining params (hash "
                              f"{state['params_hash'][:12]}, this run {params_hash[:12]}); resume with the "
                              f"params that wrote it, or start fresh without --resume")
    return state


def load_model_state(model, state_dict: dict, path: Path | str) -> None:
    """Load weights, turning a shape or key mismatch into a CheckpointError naming the checkpoint."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:240]
        raise CheckpointError(f"{path}: checkpoint does not fit this model ({detail}); resume with the same "
                              f"model.name, img_size and num_classes") from None
