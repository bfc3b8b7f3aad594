"""Layer fingerprints: what every module computed at chosen steps, small enough to ship between machines.

At a fingerprint step the recorder hooks the model and its optimizer for that one step and keeps, per
tensor, a few summary statistics and a sketch:

  weights     every parameter before the step (named_parameters order)
  forward     every module's output, in the order the modules finished (execution order)
  backward    the gradient of every module's output, in the order backward reached it
  param_grad  every parameter's gradient as the optimizer sees it (unscaled)
  update      every parameter's change made by the optimizer step (after - before)

Per tensor also its precision: the share of its nonzero (sampled) elements whose float32 mantissa fits in
bfloat16's 7 bits and in float16's 10 bits (PRECISIONS). A tensor that went through bf16 (fp16) has 1 there, one
computed in float32 ~2^-16 (2^-13): which precision a module or the optimizer computed in, whatever the values
(pipelines/localize.py `precision_changes`: a mixed-precision port that drops something to bf16 where the reference
keeps float32).

The sketch is a CountSketch with equal buckets: the elements in a fixed random order, each with a fixed
random sign, summed in `sketch_dim` groups. It is linear, so sketch(a) - sketch(b) = sketch(a - b), and
E|sketch(x)|^2 = |x|^2: two machines that never see each other estimate the relative L2 error and the
cosine of their tensors from the sketches alone (pipelines/localize.py). The order and signs come from a
numpy generator keyed by the tensor's size, the sums are plain dense reductions (no atomics): the same on
every device, deterministic on each. `whole_tensors` also keeps every tensor (small profiles only).

On steps without fingerprints nothing is hooked: the recorder costs one set lookup per step.
The file is an .npz written with fixed zip dates, so the same run gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import HarnessError

SCHEMA = 2  # 2: meta["digest"], the SHA-256 of every array and the rest of the meta, checked on load
PHASES = ("weights", "forward", "backward", "param_grad", "update")
STATS = ("mean", "std", "max_abs", "l2", "q01", "q25", "q50", "q75", "q99", "nonfinite")
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
# Quantiles from this many elements, drawn by the sketch's own order. They are for the reader (nothing judges
# them: localize compares L2 errors and non-finite counts); a sort of 2^16 elements cost 3.1 ms of a 3.9 ms
# fingerprint, ~2.6 s of every fingerprinted step of the default profile on this CPU, and 2^13 cost 0.5 ms.
# Files from before recorded 2^16 (their meta has no quantile_sample).
QUANTILE_SAMPLE = 1 << 13
SKETCH_KEY = 20210331  # CaiT's arXiv date: the order and signs every device draws
PRECISIONS = ("bf16", "fp16")  # the precision shares a fingerprint records, by format
MANTISSA_DROPPED = {"bf16": 16, "fp16": 13}  # float32's 23 mantissa bits less the format's (7, 10)
PASS_THROUGH = ("Identity", "Dropout", "DropPath", "KeyedDropPath")  # skipped when they drop nothing


class FingerprintError(HarnessError):
    """A fingerprint file that is missing, corrupt, or of another model/profile/params."""

    exit_code = 2


class FingerprintMismatch(FingerprintError):
    """Readable fingerprints that cannot be compared with each other: another model, profile, params, world
    size, sketch or baseline. (In the chain, localize says so and the chain goes on; a file that is corrupt or
    lies is a FingerprintError and stops it.)"""


@dataclass
class PhasePrints:
    """One phase of one step: entry names (in order), their shapes, stats (n x STATS), sketches (n x dim)."""

    names: list[str]
    shapes: list[list[int]]
    stats: np.ndarray
    sketch: np.ndarray
    whole: list[np.ndarray] | None = None
    precision: np.ndarray | None = None  # n x PRECISIONS shares (NaN: no nonzero element); None in older files

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


@dataclass
class Fingerprints:
    """A run's fingerprints: meta (what run made them) and {step: {phase: PhasePrints}}; a baseline's file also
    carries `spread` {step: {phase: V x n}}: each envelope variant's relative error from the reference."""

    meta: dict
    steps: dict[int, dict[str, PhasePrints]] = field(default_factory=dict)
    spread: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def variants(self) -> list[str]:
        return list(self.meta.get("envelope_variants", []))


# ---- recording (torch) -------------------------------------------------------------------------------

def resolve_steps(steps, total: int) -> list[int]:
    """Fingerprint steps with negatives counted from the end (-1: the last step), inside [0, total)."""
    out = sorted({s if s >= 0 else total + s for s in steps})
    return [s for s in out if 0 <= s < total]


class _Sketcher:
    def __init__(self, dim: int):
        self.dim = dim
        self._plans: dict = {}

    def plan(self, n: int, device):
        key = (n, str(device))
        if key not in self._plans:
            import torch

            rng = np.random.default_rng([SKETCH_KEY, n])
            order = torch.from_numpy(rng.permutation(n)).to(device)
            sign = torch.from_numpy((rng.integers(0, 2, size=n) * 2 - 1).astype(np.float32)).to(device)
            self._plans[key] = (order, sign)
        return self._plans[key]

    def __call__(self, x):
        """(moments, sketch, sample) of tensor x, float32 on x's device, nothing synchronised: moments are the
        STATS without the quantiles (mean, std, max_abs, l2, nonfinite), the sample the elements the quantiles and
        the precision shares come from (`phase_stats` takes a phase's in one batched call per sample length: the
        quantiles cost ~0.3 ms a tensor alone, the shares ~0.1 ms).

        Each the fastest of equal results on the CPU (a 418k-element tensor, torch 2.14): index_select rather
        than x[order] (3.5x), max_abs from aminmax (6x abs().max(), 25x vector_norm(inf)), the non-finite count
        as the nonzeros of x * 0 (0 for a finite element, NaN for inf and NaN; 3x isfinite)."""
        import torch

        flat = x.detach().reshape(-1).float()
        n = flat.numel()
        if n == 0:
            return torch.zeros(len(MOMENTS), device=flat.device), torch.zeros(self.dim, device=flat.device), flat
        order, sign = self.plan(n, flat.device)
        shuffled = torch.index_select(flat, 0, order).mul_(sign)
        width = -(-n // self.dim)
        if width * self.dim > n:
            shuffled = torch.cat([shuffled, shuffled.new_zeros(width * self.dim - n)])
        sketch = shuffled.view(self.dim, width).sum(1)
        sample = torch.index_select(flat, 0, order[:QUANTILE_SAMPLE])
        low, high = torch.aminmax(flat)
        moments = torch.stack([flat.mean(), flat.std(unbiased=False) if n > 1 else flat.new_zeros(()),
                               torch.maximum(low.abs(), high.abs()), flat.norm(),
                               torch.count_nonzero(flat * 0).to(flat.dtype)])
        return moments, sketch, sample


def precision_shares(values):
    """Per row of float32 `values` (... x m) and format of PRECISIONS (last axis), the share of the row's nonzero
    elements whose mantissa fits the format (NaN where none is nonzero). Exponent range is not checked: a bf16
    tensor is recognised by its mantissa alone."""
    import torch

    bits = values.contiguous().view(torch.int32)
    nonzero = (bits & 0x7FFFFFFF) != 0
    count = nonzero.sum(-1).to(values.dtype)
    return torch.stack([((bits & ((1 << MANTISSA_DROPPED[f]) - 1)) == 0).logical_and_(nonzero).sum(-1)
                        .to(values.dtype) for f in PRECISIONS], dim=-1) / count.unsqueeze(-1)


def _by_length(samples: list) -> dict[int, list[int]]:
    """Row indices of `samples` grouped by their length (the rows one batched call can take)."""
    groups: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(sample.numel(), []).append(i)
    return groups


MOMENTS = tuple(s for s in STATS if not s.startswith("q"))  # what _Sketcher computes per tensor


def phase_stats(moments: list, samples: list) -> tuple[np.ndarray, np.ndarray]:
    """(n x STATS, n x PRECISIONS) float64 of a phase: each tensor's moments with the quantiles of its sample, and
    its sample's precision shares, both taken in one batched call per sample length (equal, element for element,
    to one call per tensor). An empty tensor's quantiles are 0, its shares NaN."""
    import torch

    if not moments:
        return np.zeros((0, len(STATS))), np.zeros((0, len(PRECISIONS)))
    device, dtype = samples[0].device, samples[0].dtype
    quantiles = torch.zeros(len(samples), len(QUANTILES), dtype=dtype, device=device)
    shares = torch.full((len(samples), len(PRECISIONS)), float("nan"), dtype=dtype, device=device)
    levels = torch.tensor(QUANTILES, dtype=dtype, device=device)
    for length, rows in _by_length(samples).items():
        if length:
            where, stacked = torch.tensor(rows, device=device), torch.stack([samples[i] for i in rows])
            quantiles[where] = torch.quantile(stacked, levels, dim=1).T
            shares[where] = precision_shares(stacked)
    moments = torch.stack(moments).to(dtype)
    columns = {name: moments[:, j] for j, name in enumerate(MOMENTS)}
    columns.update({f"q{round(q * 100):02d}": quantiles[:, j] for j, q in enumerate(QUANTILES)})
    stats = torch.stack([columns[name] for name in STATS], dim=1)
    return stats.double().cpu().numpy(), shares.double().cpu().numpy()


class _PhaseBuffer:
    def __init__(self):
        self.names: list[str] = []
        self.shapes: list[list[int]] = []
        self.moments: list = []
        self.samples: list = []
        self.sketch: list = []
        self.whole: list = []

    def add(self, name: str, tensor, sketcher: _Sketcher, whole: bool) -> None:
        moments, sketch, sample = sketcher(tensor)
        self.names.append(name)
        self.shapes.append(list(tensor.shape))
        self.moments.append(moments)
        self.samples.append(sample)
        self.sketch.append(sketch)
        if whole:
            self.whole.append(tensor.detach().float().cpu().numpy().copy())

    def done(self, whole: bool) -> PhasePrints:
        import torch

        dim = self.sketch[0].numel() if self.sketch else 0
        stats, precision = phase_stats(self.moments, self.samples)
        sketch = torch.stack(self.sketch).double().cpu().numpy() if self.sketch else np.zeros((0, dim))
        return PhasePrints(self.names, self.shapes, stats, sketch, self.whole if whole else None, precision)


def _first_tensor(output):
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _passes_through(module) -> bool:
    name = type(module).__name__
    if name not in PASS_THROUGH:
        return False
    return float(getattr(module, "p", getattr(module, "drop_prob", 0.0)) or 0.0) == 0.0


class FingerprintRecorder:
    """Hooks a model and its optimizer on the chosen steps only; `save` writes what was recorded.

    The training loop calls `attach(model, optimizer)` once, `begin(step)` before the forward pass and
    `end(step, loss, lr)` after the optimizer step (cait/train.py)."""

    def __init__(self, steps, *, sketch_dim: int = 64, whole_tensors: bool = False):
        self.wanted = set(int(s) for s in steps)
        self.sketcher = _Sketcher(sketch_dim)
        self.sketch_dim = sketch_dim
        self.whole = whole_tensors
        self.recorded: dict[int, dict[str, PhasePrints]] = {}
        self.step_info: dict[int, dict] = {}
        self._handles: list = []
        self._buffers: dict[str, _PhaseBuffer] = {}
        self._calls: dict[str, int] = {}
        self._before: dict = {}
        self.model = self.optimizer = None

    def attach(self, model, optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def begin(self, step: int) -> bool:
        if step not in self.wanted or self.model is None:
            return False
        self._buffers = {p: _PhaseBuffer() for p in PHASES}
        self._calls = {}
        for name, module in self.model.named_modules():
            if name and not _passes_through(module):
                self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        self._handles.append(self.optimizer.register_step_pre_hook(self._before_update))
        self._handles.append(self.optimizer.register_step_post_hook(self._after_update))
        return True

    def _forward_hook(self, name: str):
        def hook(module, inputs, output):
            tensor = _first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                return
            calls = self._calls.get(name, 0)
            self._calls[name] = calls + 1
            key = name if calls == 0 else f"{name}#{calls}"
            self._buffers["forward"].add(key, tensor, self.sketcher, self.whole)
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: self._buffers["backward"].add(key, grad, self.sketcher, self.whole))
        return hook

    def _before_update(self, optimizer, args, kwargs) -> None:
        for name, p in self.model.named_parameters():
            self._buffers["weights"].add(name, p, self.sketcher, self.whole)
            if p.grad is not None:
                self._buffers["param_grad"].add(name, p.grad, self.sketcher, self.whole)
        self._before = {name: p.detach().clone() for name, p in self.model.named_parameters()}

    def _after_update(self, optimizer, args, kwargs) -> None:
        for name, p in self.model.named_parameters():
            if name in self._before:
                self._buffers["update"].add(name, p.detach() - self._before[name], self.sketcher, self.whole)
        self._before = {}

    def end(self, step: int, loss: float, lr: float) -> None:
        if not self._buffers:
            return
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.recorded[step] = {p: b.done(self.whole) for p, b in self._buffers.items() if b.names}
        self.step_info[step] = {"loss": float(loss), "lr": float(lr)}
        self._buffers = {}

    def fingerprints(self, meta: dict) -> Fingerprints:
        meta = {**meta, "schema": SCHEMA, "sketch_dim": self.sketch_dim, "stats": list(STATS),
                "precisions": list(PRECISIONS), "quantiles": list(QUANTILES), "quantile_sample": QUANTILE_SAMPLE, "whole_tensors": self.whole,
                "step_info": {str(s): i for s, i in sorted(self.step_info.items())}}
        return Fingerprints(meta, dict(sorted(self.recorded.items())))


# ---- the file -----------------------------------------------------------------------------------------

def _key(step: int, phase: str, what: str) -> str:
    return f"s{step}.{phase}.{what}"


def to_bytes(prints: Fingerprints) -> bytes:
    """The .npz bytes: arrays per step and phase, names/shapes in the JSON meta; fixed zip dates."""
    layout: dict = {}
    arrays: dict[str, np.ndarray] = {}
    for step, phases in prints.steps.items():
        layout[str(step)] = {}
        for phase, pp in phases.items():
            layout[str(step)][phase] = {"names": pp.names, "shapes": pp.shapes, "whole": pp.whole is not None}
            arrays[_key(step, phase, "stats")] = np.asarray(pp.stats, dtype=np.float64)
            arrays[_key(step, phase, "sketch")] = np.asarray(pp.sketch, dtype=np.float64)
            if pp.precision is not None:
                arrays[_key(step, phase, "precision")] = np.asarray(pp.precision, dtype=np.float64)
            for i, tensor in enumerate(pp.whole or []):
                arrays[_key(step, phase, f"whole{i}")] = np.asarray(tensor, dtype=np.float32)
    for step, phases in prints.spread.items():
        for phase, values in phases.items():
            arrays[_key(step, phase, "spread")] = np.asarray(values, dtype=np.float64)
    meta = {k: v for k, v in prints.meta.items() if k != "digest"}
    meta = {**meta, "schema": SCHEMA, "layout": layout}
    meta["digest"] = digest(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, arrays[key], allow_pickle=False)
    return buffer.getvalue()


def digest(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of a file's content: the meta (without its digest) as sorted JSON, then every array by name
    with its dtype, shape and bytes. A number changed anywhere in the file, by a disk or a hand, no longer
    matches it (as a baseline's checksum does for baseline.json)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    for key in sorted(k for k in arrays if k != "meta"):
        array = np.ascontiguousarray(arrays[key])
        h.update(f"\0{key}\0{array.dtype.str}\0{list(array.shape)}\0".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save(path: Path | str, prints: Fingerprints) -> Path:
    from cait.files import atomic_write_bytes

    return atomic_write_bytes(path, to_bytes(prints))


def load(path: Path | str) -> Fingerprints:
    """Read a fingerprint file; anything unreadable or inconsistent is a FingerprintError naming the file and the
    field: the zip and its arrays, the schema, the digest of the content, the layout (names, shapes, one stats and
    sketch row per name), and the spread (one row per envelope variant, each value >= 0 and finite, or NaN where
    a variant lacked the entry). A run's values may be non-finite (a run that diverged); a reference's may not:
    `load_reference` checks that."""
    path = Path(path)
    if not path.exists():
        raise FingerprintError(f"{path}: not found; the train stage writes it (train.fingerprints), the baseline "
                               f"command writes a baseline's")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        if "meta" not in data:
            raise FingerprintError(f"{path}: no meta entry: not a fingerprint file; record it again")
        meta = json.loads(bytes(data.pop("meta")).decode())
        if not isinstance(meta, dict):
            raise FingerprintError(f"{path}: meta is not a JSON object; record it again")
        if meta.get("schema") != SCHEMA:
            raise FingerprintError(f"{path}: fingerprint schema {meta.get('schema')!r}, this code reads {SCHEMA}; "
                                   f"record it again with this code")
        if meta.get("digest") != digest(meta, data):
            raise FingerprintError(f"{path}: meta.digest does not match the file's content (edited or corrupt); "
                                   f"record it again (the train stage, or make baseline for a baseline's)")
        return _from_arrays(path, meta, data)
    except FingerprintError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, EOFError, OverflowError,
            NotImplementedError, RuntimeError, struct.error, zlib.error, zipfile.BadZipFile) as exc:
        # what a damaged zip or .npy raises (a bad CRC, deflate stream, header, compression method or size)
        raise FingerprintError(f"{path}: not a readable fingerprint file ({type(exc).__name__}: "
                               f"{str(exc)[:120]}); record it again") from None


def _from_arrays(path: Path, meta: dict, data: dict[str, np.ndarray]) -> Fingerprints:
    """The checked Fingerprints of a file's meta and arrays (its digest already matched)."""
    def bad(where: str, what: str) -> FingerprintError:
        return FingerprintError(f"{path}: {where}: {what}; record it again")

    dim = meta.get("sketch_dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise bad("meta.sketch_dim", f"{dim!r} is not a positive whole number")
    variants = meta.get("envelope_variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants) \
            or len(set(variants)) != len(variants):
        raise bad("meta.envelope_variants", "not a list of distinct names")
    layout = meta.get("layout")
    if not isinstance(layout, dict):
        raise bad("meta.layout", "missing or not an object")
    prints = Fingerprints(meta)
    known = set()
    for step_text, phases in layout.items():
        if not step_text.isdigit() or not isinstance(phases, dict):
            raise bad(f"meta.layout.{step_text}", "not a step number with its phases")
        step = int(step_text)
        prints.steps[step] = {}
        for phase, info in phases.items():
            where = f"step {step} {phase}"
            if phase not in PHASES or not isinstance(info, dict):
                raise bad(where, f"not one of the phases {', '.join(PHASES)}")
            names, shapes = info.get("names"), info.get("shapes")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
                    or len(set(names)) != len(names):
                raise bad(f"{where} names", "not a list of distinct entry names")
            n = len(names)
            if not isinstance(shapes, list) or len(shapes) != n or not all(
                    isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                    for d in shape) for shape in shapes):
                raise bad(f"{where} shapes", f"not one shape (a list of sizes >= 0) per each of the {n} names")
            stats, sketch = data[_key(step, phase, "stats")], data[_key(step, phase, "sketch")]
            known.update({_key(step, phase, "stats"), _key(step, phase, "sketch")})
            if stats.dtype != np.float64 or sketch.dtype != np.float64 or stats.shape != (n, len(STATS)) \
                    or sketch.shape != (n, dim):
                raise bad(where, f"stats {stats.dtype}{list(stats.shape)} and sketch {sketch.dtype}"
                                 f"{list(sketch.shape)} do not match the {n} names (float64 [{n}, {len(STATS)}] "
                                 f"and [{n}, {dim}])")
            counts = stats[:, STATS.index("nonfinite")]
            wrong = np.flatnonzero(~((counts >= 0) & (counts == np.round(counts))))
            if wrong.size:
                raise bad(f"{where} {names[wrong[0]]}", f"stats.nonfinite {float(counts[wrong[0]])!r} is not a count")
            whole = None
            if info.get("whole"):
                whole = []
                for i in range(n):
                    key = _key(step, phase, f"whole{i}")
                    known.add(key)
                    tensor = data[key]
                    if list(tensor.shape) != shapes[i]:
                        raise bad(f"{where} {names[i]}", f"whole tensor of shape {list(tensor.shape)}, "
                                                         f"the layout says {shapes[i]}")
                    whole.append(tensor)
            precision = data.get(_key(step, phase, "precision"))
            if precision is not None:
                known.add(_key(step, phase, "precision"))
                if precision.dtype != np.float64 or precision.shape != (n, len(PRECISIONS)):
                    raise bad(f"{where} precision", f"{precision.dtype}{list(precision.shape)} is not float64 "
                                                    f"[{n}, {len(PRECISIONS)}]")
                wrong = np.argwhere(~(np.isnan(precision) | ((precision >= 0) & (precision <= 1))))
                if wrong.size:
                    i, col = wrong[0]
                    raise bad(f"{where} {names[i]}", f"precision {PRECISIONS[col]} share {float(precision[i, col])!r} "
                                                     f"is not in [0, 1]")
            prints.steps[step][phase] = PhasePrints(list(names), [list(s) for s in shapes], stats, sketch, whole,
                                                    precision)
            spread = data.get(_key(step, phase, "spread"))
            if spread is not None:
                known.add(_key(step, phase, "spread"))
                if spread.dtype != np.float64 or spread.shape != (len(variants), n):
                    raise bad(f"{where} spread", f"{spread.dtype}{list(spread.shape)} is not one float64 row per "
                                                 f"envelope variant ({len(variants)}) and one column per entry ({n})")
                _check_spread(spread, names, variants, f"{path}: {where}")
                prints.spread.setdefault(step, {})[phase] = spread
    extra = sorted(set(data) - known)
    if extra:
        raise bad(extra[0], "an array the layout does not name")
    return prints


def _check_spread(spread: np.ndarray, names: list[str], variants: list[str], where: str) -> None:
    """Each value a relative error: finite and >= 0, or NaN where a variant lacked the entry (it adds none)."""
    wrong = np.argwhere(~(np.isnan(spread) | (np.isfinite(spread) & (spread >= 0))))
    if wrong.size:
        v, j = wrong[0]
        raise FingerprintError(f"{where} {names[j]} spread ({variants[v]}): {float(spread[v, j])!r} is not a "
                               f"relative error (finite, >= 0); record it again")


def load_reference(path: Path | str) -> Fingerprints:
    """Read a reference fingerprint file (a baseline's, or `localize replay --envelope`'s): `load`, then what a
    tolerance is made of must be there and be numbers. A run's own file (no envelope spread: meta has no
    envelope_variants) is refused: used as a reference, its tolerance would be the floor alone, without a word.
    Every stats and sketch value must be finite: a reference that is NaN or inf somewhere makes every
    comparison with it NaN, which reads as a divergence (or hides one)."""
    prints = load(path)
    check_reference(prints, path)
    return prints


def check_reference(prints: Fingerprints, path: Path | str) -> None:
    """Refuse, naming `path` and the entry, fingerprints that cannot be a reference (see load_reference)."""
    if "envelope_variants" not in prints.meta:
        raise FingerprintError(f"{path}: a run's fingerprints, not a reference (no envelope spread: "
                               f"meta.envelope_variants missing); use the baseline's fingerprints.npz (make baseline) "
                               f"or a `localize replay --envelope` file")
    for step, phases in prints.steps.items():
        for phase, pp in phases.items():
            where = f"{path}: step {step} {phase}"
            for what, values in (("stats", pp.stats), ("sketch", pp.sketch)):
                bad = np.argwhere(~np.isfinite(values))
                if bad.size:
                    i, col = bad[0]
                    label = STATS[col] if what == "stats" else f"bucket {col}"
                    raise FingerprintError(f"{where} {pp.names[i]}: {what} {label} is {float(values[i, col])!r}; a "
                                           f"reference must be finite everywhere: record it again (make baseline)")
            for name, tensor in zip(pp.names, pp.whole or []):
                if not np.isfinite(tensor).all():
                    raise FingerprintError(f"{where} {name}: the whole tensor holds non-finite values; a reference "
                                           f"must be finite everywhere: record it again (make baseline)")
            spread = prints.spread.get(step, {}).get(phase)
            if spread is not None:
                _check_spread(spread, pp.names, prints.variants, where)
