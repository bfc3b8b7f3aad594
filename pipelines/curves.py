"""Per-step training curves: the CSV the train stage writes and every later stage reads.

Columns: step, loss, lr, batch_hash. Losses are written with repr() so that a curve read back is
bit-for-bit the curve that was trained. batch_hash is a 64-bit content hash of the step's input batch
(images and targets, over all ranks): two runs with equal hashes saw the same data. Only what the same
params give bit for bit on the same machine is in the curve (it is a DVC output, tracked by its hash);
the wall-clock columns, samples_per_s and elapsed_s, go to timing.csv beside it (`write_timing_csv`).
Curves written before those changes (with the timing columns, or without batch_hash) still read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cait.errors import CurveError
from cait.files import atomic_output

CURVE_COLUMNS = ("step", "loss", "lr", "batch_hash")
TIMING_COLUMNS = ("step", "samples_per_s", "elapsed_s")  # timing.csv: measured, different in every run
TEXT_COLUMNS = ("batch_hash",)  # kept as strings; every other column is a number


@dataclass
class Curve:
    """A loss curve with its step numbers; `extra` holds any further per-step columns."""

    steps: np.ndarray  # int64
    loss: np.ndarray  # float64
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.loss = np.asarray(self.loss, dtype=np.float64)
        if self.steps.shape != self.loss.shape or self.steps.ndim != 1:
            raise ValueError(f"steps {self.steps.shape} and loss {self.loss.shape} must be 1-D of equal length")

    def __len__(self) -> int:
        return len(self.loss)


def format_value(value: float) -> str:
    """Shortest text that reads back to the same float64."""
    return repr(float(value))


def write_curve_csv(path: Path | str, rows: list[dict]) -> None:
    """Write rows atomically (a temp file renamed into place), so a crash never leaves half a curve."""
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CURVE_COLUMNS)
        for row in rows:
            writer.writerow([int(row["step"])] + [str(row.get(c, "")) if c in TEXT_COLUMNS else format_value(row[c])
                                                  for c in CURVE_COLUMNS[1:]])


def write_timing_csv(path: Path | str, rows: list[dict]) -> None:
    """The steps' wall-clock measurements (samples/s, seconds since the start), atomically: not a DVC output,
    since no two runs measure the same."""
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TIMING_COLUMNS)
        for row in rows:
            writer.writerow([int(row["step"])] + [format_value(row[c]) for c in TIMING_COLUMNS[1:]])


def read_curve_csv(path: Path | str) -> Curve:
    """Read a curve CSV; any structural problem is a CurveError naming the file and line.

    Non-finite losses (nan, inf) are kept: deciding what they mean is the verdict's job.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CurveError(f"{path}: curve file not found; run the train stage first (dvc repro train)") from None
    return parse_curve_csv(data, str(path))


def parse_curve_csv(data: bytes | str, source: str, only_loss: bool = False) -> Curve:
    """A curve CSV's text (or bytes) as a Curve. Pyarrow's C++ reader parses the numbers (correctly rounded,
    so a repr() written float reads back bit for bit); any problem re-reads it cell by cell to name the line.
    `only_loss`: read the step and loss columns alone (a comparison needs no more; half the memory)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        text_head = raw[:65536].decode()
    except UnicodeDecodeError:
        text_head = ""
    header = next(csv.reader(text_head.splitlines()[:1]), None) if text_head else None
    if not header or "step" not in header or "loss" not in header:
        raise CurveError(f"{source}: not a curve CSV (needs a header with 'step' and 'loss' columns)")
    try:
        columns = _columns_at_once(header, raw, ["step", "loss"] if only_loss else header)
    except (ValueError, ImportError):  # something is wrong: the per-cell reading names the line
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise CurveError(f"{source}: not UTF-8 text (byte {exc.start}); a curve CSV is plain text") from None
        try:
            reader = csv.reader(text.splitlines())
            next(reader, None)
            rows = list(reader)
        except csv.Error as exc:
            raise CurveError(f"{source}: not a readable CSV ({exc}; corrupt?)") from None
        columns = _columns_checked(Path(source), header, rows)
        if only_loss:
            columns = {"step": columns["step"], "loss": columns["loss"]}
    if not len(columns["loss"]):
        raise CurveError(f"{source}: the curve has no steps")
    steps = np.asarray(columns.pop("step"), dtype=np.float64)
    if not np.all(np.isfinite(steps) & (steps == np.round(steps))):
        raise CurveError(f"{source}: step numbers must be whole numbers")
    loss = columns.pop("loss")
    extra = {k: np.asarray(v, dtype=object if k in TEXT_COLUMNS else np.float64) for k, v in columns.items()}
    return Curve(steps.astype(np.int64), np.asarray(loss, dtype=np.float64), extra)


def first_negative(values) -> int | None:
    """Index of the first value below 0, else None. A cross-entropy loss is never negative, so such a value
    is a corrupt or foreign number; NaN/inf are not caught here (the verdict makes them inconclusive)."""
    below = np.flatnonzero(np.asarray(values, dtype=np.float64) < 0)
    return int(below[0]) if len(below) else None


def check_loss_sign(curve: Curve, source: str, allow_negative: bool = False) -> None:
    """Refuse a curve with a negative loss unless compare.allow_negative_loss says the metric can be negative."""
    i = None if allow_negative else first_negative(curve.loss)
    if i is not None:
        raise CurveError(f"{source}: loss at step {int(curve.steps[i])} is {float(curve.loss[i])!r}, below 0, which a "
                         f"cross-entropy loss never is (corrupt file?); for a metric that can be negative set "
                         f"compare.allow_negative_loss: true")


def _columns_at_once(header: list[str], raw: bytes, wanted: list[str]) -> dict[str, np.ndarray]:
    """Every column at once with pyarrow's CSV reader (C++, no Python object per cell); ValueError on any
    row of the wrong width, any cell that is not a number, or duplicate column names."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if len(set(header)) != len(header):
        raise ValueError("duplicate columns")
    types = {name: pa.string() if name in TEXT_COLUMNS else pa.float64() for name in header}
    try:
        table = pcsv.read_csv(pa.BufferReader(raw), parse_options=pcsv.ParseOptions(newlines_in_values=False),
                              convert_options=pcsv.ConvertOptions(column_types=types, null_values=[],
                                                                  include_columns=wanted,
                                                                  strings_can_be_null=False,
                                                                  quoted_strings_can_be_null=False))
    except pa.ArrowException as exc:  # any refusal (a bad cell, a header pyarrow reads otherwise): name the line
        raise ValueError(str(exc)) from None
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in wanted}


def _columns_checked(path: Path, header: list[str], rows: list[list[str]]) -> dict[str, list]:
    """Cell by cell, raising a CurveError that names the file, line and column of the first problem."""
    columns: dict[str, list] = {name: [] for name in header}
    for line_no, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise CurveError(f"{path}:{line_no}: expected {len(header)} values, found {len(row)} (truncated file?)")
        for name, cell in zip(header, row):
            if name in TEXT_COLUMNS:
                columns[name].append(cell)
                continue
            try:
                columns[name].append(float(cell))
            except ValueError:
                raise CurveError(f"{path}:{line_no}: column {name!r} holds non-numeric value {cell!r}") from None
    return columns
