"""Loss curves from the logs users already have, and the ModelZoo log line our train stage prints.

Formats (`load_curve(..., fmt=...)`; `auto` tries them in this order and takes the first that finds a loss):

- `dllogger`: ModelZoo tcap_dllogger stdout,
  `TCAPPDLL <date> <time> - Epoch: 0 Iteration: 0  rank : 0  train.loss : 6.99  train.ips : 3.66 imgs/s`,
  with any spacing (`rank: 0 train.loss: 6.9`, tabs). Searched over the whole text, not line by line, as
  ModelZoo's loss.py does: lines of several ranks may be glued together without a newline. Rank 0 by
  default. Records without the Epoch/Iteration prefix are numbered by position, as ModelZoo does; a log
  with neither falls back to ModelZoo's own `loss <x>` pattern.
- `dllogger-json`: dllogger's JSON-lines stream (`DLLL {"step": [epoch, iteration], "data": {...}}`).
- `timm`: timm train.py, `Train: 0 [  50/1251 (  4%)]  Loss: 6.912 (6.93) ...` (step = epoch x total + batch).
- `mmengine`: `Epoch(train)  [1][  50/1251]  ... loss: 6.91` or `Iter(train) [  50/90000] ... loss: 6.91`.
- `epoch`: `Epoch[0]: train_loss 4.11 ... | val_loss 4.03` (step = epoch) and DeiT's
  `Epoch: [0]  [  50/1251]  ... loss: 6.93 (6.95)` (step = epoch x total + batch). The train loss by
  default (`train_loss`, `train.loss`, `train loss`, then `loss`); another with `metric`.
- `step`: plain `step 10 loss 6.9` lines (also `step: 10, loss=6.9`, `iter 10 ...`).
- `regex`: a user pattern with a `loss` group (or one group) and optionally a `step` group.
- `csv`: a curve CSV (columns step and loss; others ignored).
- `json`: {"steps": [...], "loss": [...]}, a list of {"step": s, "loss": v}, or a baseline file.
- `mlflow`: an MLflow run id (`mlflow:<id>`, `runs:/<id>`, or a bare 32-hex id): its `loss` history.

Every text log is first made plain: gzip/bz2/xz files are decompressed, ANSI colour codes removed, CRLF
made LF, torchrun's `[rank0]:` / `[default0]:` line prefixes taken off (lines of other ranks are left out,
but for dllogger records, which carry their own rank). A last line without a line end is read as loss.py
reads it (logs copied out of CI often end so, and their last record is complete), with a note; a file
whose size changes while it is read is refused as a log still being written. JSON is recognised by
parsing, not by its first character, so a text log that starts with `[INFO]` is a text log. A log holding
several runs (the step numbers start again) is refused unless `run` picks one (`first`, `last` or its
number, from 1).

Values no training prints are refused as corrupt input, naming the file, line and field: a magnitude
above LOSS_LIMIT, a curve that is exactly 0 at every step (a broken logger), numbers cut at a comma
(`2,302585`: a decimal comma, read as 2 by loss.py's regex too). A user `--regex` gets a time limit
(REGEX_SECONDS + the text at REGEX_MIN_CHARS_PER_S): a pattern that backtracks catastrophically is
stopped and the line it stuck on named.

Loss values keep the exact text the log printed, parsed as float() parses it (the regex runs in C over
the whole text, the numbers go through pyarrow's correctly rounded parser, no Python loop per line), so
the ModelZoo numbers computed from an import are the numbers ModelZoo's script computes from the same file.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import lzma
import os
import pickle
import re
import signal
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np

from cait.errors import BaselineError, ConfigError
from pipelines.curves import Curve, parse_curve_csv

FORMATS = ("auto", "dllogger", "dllogger-json", "timm", "mmengine", "epoch", "step", "regex", "csv", "json",
           "mlflow")
DLLOGGER_PREFIX = "TCAPPDLL"
TOKEN_CHAR = r"[^\s,;|(){}\[\]'\"]"
TOKEN = rf"(?P<loss>{TOKEN_CHAR}+)"  # after a mandatory `:`: whatever is there (a non-number is an error)
NUMBER = r"(?P<loss>[-+.\dnNiI][^\s,;|(){}\[\]'\"]*)"  # after an optional separator: something number-like
KEY = r"(?<![\w.]){key}(?![\w.])"
# dllogger records: with the Epoch/Iteration prefix (step numbers), and without (numbered by position)
DLLOGGER_RECORD = (r"Epoch:\s*(?P<epoch>\d+)\s+Iteration:\s*(?P<step>\d+)\s+rank\s*:\s*(?P<rank>\d+)\s+"
                   r"{key}\s*:\s*" + TOKEN)
DLLOGGER_RANKED = r"rank\s*:\s*(?P<rank>\d+)\s+{key}\s*:\s*" + TOKEN
DLLOGGER_RANK_OF = r"rank\s*:\s*(\d+)\s+{key}\s*:\s*(?=" + TOKEN_CHAR + ")"  # the rank of every ranked record
MODELZOO_FALLBACK = r"loss (?P<loss>[\d\.e-]+)"  # ModelZoo loss.py's own fallback, verbatim
TIMM_RECORD = (r"Train:\s*(?P<epoch>\d+)\s*\[\s*(?P<step>\d+)\s*/\s*(?P<total>\d+)[^\]\n]*\][^\n]*?"
               + KEY + r"\s*:\s*" + TOKEN)
MMENGINE_RECORD = (r"(?:Epoch\(train\)\s*\[(?P<epoch>\d+)\]|Iter\(train\))\s*\[\s*(?P<step>\d+)\s*/\s*"
                   r"(?P<total>\d+)\s*\][^\n]*?" + KEY + r"\s*:\s*" + TOKEN)
EPOCH_RECORD = (r"Epoch\s*:?\s*\[\s*(?P<epoch>\d+)\s*\]\s*:?(?:\s*\[\s*(?P<step>\d+)\s*/\s*(?P<total>\d+)\s*\])?"
                r"[^\n]*?" + KEY + r"\s*[:=]?\s*" + NUMBER)
STEP_RECORD = (r"(?<![\w.])(?:[Ss]tep|STEP|[Ii]ter(?:ation)?)\s*[:=]?\s*(?P<step>\d+)(?![\d.])[^\n]*?"
               + KEY + r"\s*[:=]?\s*" + NUMBER)


@dataclass(frozen=True)
class LineFormat:
    """A text log format: its record pattern (named groups loss and any of epoch, step, total, rank; `{key}`
    stands for the metric's name) and the metric names read when none is given, in order of preference."""

    name: str
    pattern: str
    keys: tuple[str, ...]
    example: str
    hint: str = ""  # text that must occur in the log for the format to be worth a full scan
    first_epoch: int = 0  # mmengine counts epochs from 1


LINE_FORMATS = {
    "timm": LineFormat("timm", TIMM_RECORD, ("Loss",), "Train: 0 [  50/1251 (  4%)]  Loss: 6.912 (6.93)", "Train:"),
    "mmengine": LineFormat("mmengine", MMENGINE_RECORD, ("loss",), "Epoch(train)  [1][  50/1251]  ... loss: 6.91",
                           "(train)", first_epoch=1),
    "epoch": LineFormat("epoch", EPOCH_RECORD, ("train_loss", "train.loss", "train loss", "loss"),
                        "Epoch[0]: train_loss 4.11 | val_loss 4.03", "Epoch"),
    "step": LineFormat("step", STEP_RECORD, ("loss", "Loss", "train_loss", "train/loss"), "step 10 loss 6.9"),
}
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
TORCHRUN_PREFIX = re.compile(r"^\[(?:rank|default)(\d+)\]:[ \t]?", re.MULTILINE)
JSON_START = re.compile(r'\s*(?:\{|\[\s*(?:[{\["\]]|-?\d|true|false|null))')  # `[INFO]` is not JSON
MLFLOW_ID = re.compile(r"^(?:mlflow:|runs:/)?([0-9a-f]{32})/?$")
CHUNK_CHARS = 8 << 20  # the text is scanned in pieces of this size (cut at line ends): bounded Python objects
MAGIC = ((b"\x1f\x8b", "gzip", gzip.decompress), (b"BZh", "bzip2", bz2.decompress),
         (b"\xfd7zXZ\x00", "xz", lzma.decompress))
# No float32 training prints a loss above 2**64 (~1.8e19, ~sqrt(float32 max)) and goes on: a cross-entropy L needs
# logits L apart, so gradients ~L behind the head, whose squares (Adam's second moments, grad-norm clipping) pass
# float32's max (3.4e38) there. 1e30 or 1e300 is a corrupt value or a sentinel, never a loss; inf and nan, which a
# diverged run prints, are kept (the verdict is inconclusive). Counters read with --metric fit too (uint64).
BESIDE_CHARS = 32 << 20  # a text this long runs independent passes in a forked process beside this one
LOSS_LIMIT = 2.0 ** 64
REGEX_SECONDS = 10.0  # a user --regex may take this long, plus the text at REGEX_MIN_CHARS_PER_S ...
REGEX_MIN_CHARS_PER_S = 1e6  # ... (a linear pattern scans a log at >= 10 MB/s, even on a loaded machine)


@dataclass
class ImportedCurve:
    curve: Curve
    source: str  # what was read, as a user names it
    format: str
    notes: list[str] = field(default_factory=list)  # how the steps were numbered, what was skipped
    baseline: object | None = None  # a pipelines.baselines.Baseline when the file was one
    lines: tuple[int, int] | None = None  # first and last line of the values read (text logs)
    metric: str | None = None  # the value read (train.loss, Loss, ...), where the log offers several
    line_of: Callable[[int], int] | None = field(default=None, repr=False)  # point index -> line (text logs)

    def describe(self) -> dict:
        """What was read, for the verdict: how many points, from which lines, in which format."""
        out = {"source": self.source, "format": self.format, "points": len(self.curve)}
        if self.lines:
            out["lines"] = list(self.lines)
        if self.metric:
            out["metric"] = self.metric
        return out


def dllogger_line(row: dict, epoch: int = 0, rank: int = 0) -> str:
    """The per-step line ModelZoo's tcap_dllogger prints (double spaces included); `parse_dllogger` reads it."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    return (f"{DLLOGGER_PREFIX} {stamp} - Epoch: {epoch} Iteration: {row['step']}  rank : {rank}  "
            f"train.loss : {row['loss']}  train.ips : {row['samples_per_s']} imgs/s")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _float_column(column) -> np.ndarray:
    """A pyarrow float64 column as a numpy array, NaN where null, from its buffers: pyarrow's own to_numpy
    imports pandas on first use (0.2 s of CPU, a fifth of reading a 100 MB log)."""
    parts = []
    for chunk in column.chunks:
        if not len(chunk):
            continue
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=np.float64, count=len(chunk), offset=chunk.offset * 8)
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
            values = np.where(bits[chunk.offset:chunk.offset + len(chunk)].astype(bool), values, np.nan)
        parts.append(values)
    return np.concatenate(parts) if parts else np.empty(0)


class _TimeUp(Exception):
    """A time limit ran out (raised from SIGALRM into the regex engine, which checks for signals)."""


@contextmanager
def _time_limit(seconds: float | None):
    """Raise _TimeUp in the block after `seconds` (SIGALRM; the main thread only, elsewhere no limit). An
    outer timer (pytest-timeout's) is put back with the time it had left."""
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise _TimeUp()

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    outer, interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3), interval)



class _Beside:
    """`fn()` in a forked child process while the caller goes on: the regex engine holds the GIL, so a second
    pass over a long text gets a second core only in another process (the text is shared copy-on-write).
    Inline, when `result()` is asked for, where the text is short, fork is missing or one CPU is available.
    `result()` gives fn's value or raises its exception; a child that died without answering is redone inline.
    Use as a context manager: leaving it early stops and reaps the child."""

    def __init__(self, fn: Callable[[], object], text_chars: int):
        self.fn, self.pid, self.fd = fn, None, None
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        if text_chars < BESIDE_CHARS or cpus < 2 or not hasattr(os, "fork"):
            return
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compute, send, leave without running the parent's exit handlers
            try:
                os.close(read)
                try:
                    payload = pickle.dumps((True, fn()))
                except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
                    payload = pickle.dumps((False, exc))
                with os.fdopen(write, "wb") as out:
                    out.write(payload)
            finally:
                os._exit(0)
        os.close(write)
        self.pid, self.fd = pid, read

    def result(self):
        if self.pid is None:
            return self.fn()
        with os.fdopen(self.fd, "rb") as answer:
            self.fd = None
            data = answer.read()
        os.waitpid(self.pid, 0)
        self.pid = None
        if not data:
            return self.fn()
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = None


class Scan:
    """Every match of a pattern in a text, its groups as float64 columns (NaN where an optional group took no
    part). findall runs in C a chunk at a time and pyarrow parses the numbers: no Python code per line, and
    at most one chunk's strings alive at once. `line(k)` finds the line of match k only when asked.
    `limit_s` bounds the time of the whole scan (a user's pattern): past it, ConfigError naming the line."""

    def __init__(self, regex: re.Pattern, text: str, source: str, numeric: tuple[str, ...] | None = None,
                 limit_s: float | None = None):
        self.regex, self.text, self.source = regex, text, source
        by_index = {i: name for name, i in regex.groupindex.items()}
        self.names = [by_index.get(i, f"group{i}") for i in range(1, regex.groups + 1)]
        self.numeric = [n for n in self.names if numeric is None or n in numeric]
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.numeric}
        self.chunks: list[tuple[int, int, int, int]] = []  # (start, end, matches before it, matches in it)
        count, start = 0, 0
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while start < len(text):
            end = text.find("\n", min(start + CHUNK_CHARS, len(text)) - 1)
            end = len(text) if end < 0 else end + 1
            if deadline is None:
                rows = regex.findall(text, start, end)
            else:
                try:
                    with _time_limit(deadline - time.monotonic()):
                        rows = regex.findall(text, start, end)
                except _TimeUp:
                    raise self._stuck(start, end, limit_s) from None
            self.chunks.append((start, end, count, len(rows)))
            if rows:
                for name, values in self._columns(rows, start, end).items():
                    parts[name].append(values)
                count += len(rows)
            start = end
        self.count = count
        self.columns = {n: np.concatenate(v) if v else np.empty(0) for n, v in parts.items()}

    def _columns(self, rows: list, start: int, end: int) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        single = not isinstance(rows[0], tuple)
        wanted = [self.names.index(n) for n in self.numeric]
        body = "\n".join(rows) if single else "\n".join(map("\x1f".join, rows))
        try:
            table = pcsv.read_csv(
                pa.BufferReader(body.encode()),
                read_options=pcsv.ReadOptions(column_names=self.names, block_size=1 << 26),
                parse_options=pcsv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False,
                                                ignore_empty_lines=False),
                convert_options=pcsv.ConvertOptions(column_types={n: pa.float64() for n in self.numeric},
                                                    include_columns=self.numeric, null_values=[""],
                                                    strings_can_be_null=False))
            if table.num_rows == len(rows):
                return {n: _float_column(table.column(n)) for n in self.numeric}
        except pa.ArrowException:  # any value pyarrow refuses: the per-value path below names it
            pass
        # a value pyarrow does not take (or a capture holding a separator): float() each, naming the bad one
        out = {n: np.empty(len(rows)) for n in self.numeric}
        for k, row in enumerate(rows):
            cells = (row,) if single else row
            for name, i in zip(self.numeric, wanted):
                cell = cells[i]
                try:
                    out[name][k] = float(cell) if cell != "" else np.nan
                except ValueError:
                    where = self._match(k, start, end)
                    what = "loss" if name in ("loss", "group1") else name
                    raise BaselineError(f"{self.source}:{_line_of(self.text, where.start(i + 1))}: {what} "
                                        f"{cell!r} is not a number") from None
        return out

    def _stuck(self, start: int, end: int, limit_s: float) -> ConfigError:
        """The error for a pattern that ran out of time in text[start:end]: the line it sticks on, found by
        trying it line by line under the same limit (or the chunk's lines, if no single line is the cause)."""
        first = _line_of(self.text, start)
        number, line = first, ""
        try:
            with _time_limit(limit_s):
                for number, line in enumerate(self.text[start:end].split("\n"), start=first):
                    self.regex.search(line)
            where = f"lines {first}-{number} (no single line: the pattern spans lines)"
        except _TimeUp:
            where = f"line {number} ({line.strip()[:80]!r})"
        return ConfigError(f"--regex {self.regex.pattern!r}: stopped after {limit_s:.3g} s at {self.source} {where}: "
                           f"the pattern backtracks catastrophically there (nested or overlapping repeats such as "
                           f"(a+)+ or (.*?,)*); make each repeat match one thing, e.g. [^,]* or \\S+ in place of .*")

    def _match(self, k: int, start: int, end: int) -> re.Match:
        for j, m in enumerate(self.regex.finditer(self.text, start, end)):
            if j == k:
                return m
        raise IndexError(k)

    def line(self, index: int) -> int:
        """Line number (from 1) where match `index` starts."""
        for start, end, before, count in self.chunks:
            if before <= index < before + count:
                return _line_of(self.text, self._match(index - before, start, end).start())
        raise IndexError(index)


@dataclass
class Records:
    """Values read from a log, in log order, before they become a curve: NaN where a field is absent."""

    loss: np.ndarray
    epoch: np.ndarray
    step: np.ndarray
    total: np.ndarray
    line: object  # callable: record index -> line number


def _selected(records: Records, keep: np.ndarray) -> Records:
    index = np.flatnonzero(keep)
    return Records(records.loss[index], records.epoch[index], records.step[index], records.total[index],
                   lambda k: records.line(int(index[k])))


def _runs(records: Records) -> list[tuple[int, int]]:
    """[start, end) of each run: a new one starts where (epoch, step) does not move forward."""
    n = len(records.loss)
    if n < 2 or np.all(np.isnan(records.step)) and np.all(np.isnan(records.epoch)):
        return [(0, n)]
    epoch = np.nan_to_num(records.epoch, nan=-1.0)
    step = np.nan_to_num(records.step, nan=-1.0)
    back = (epoch[1:] < epoch[:-1]) | ((epoch[1:] == epoch[:-1]) & (step[1:] <= step[:-1]))
    starts = [0, *(np.flatnonzero(back) + 1).tolist(), n]
    return list(zip(starts[:-1], starts[1:]))


def _pick_run(records: Records, run: str | None, source: str, notes: list[str]) -> Records:
    runs = _runs(records)
    if len(runs) == 1:
        if run not in (None, "first", "last", "1"):
            raise ConfigError(f"--run {run}: {source} holds a single run")
        return records

    def label(i: int) -> str:
        a, b = runs[i]
        where = f"lines {records.line(a)}-{records.line(b - 1)}"
        if not np.all(np.isnan(records.step[a:b])):
            return f"run {i + 1}: {b - a} points, {where}"
        return f"run {i + 1}: epochs {records.epoch[a]:.0f}-{records.epoch[b - 1]:.0f}, {b - a} points, {where}"

    listing = "; ".join(label(i) for i in range(min(len(runs), 8))) + ("; ..." if len(runs) > 8 else "")
    if run is None:
        raise BaselineError(f"{source}: holds {len(runs)} runs (the step numbers start again): {listing}; "
                            f"pick one with --run first|last|N")
    choice = {"first": 0, "last": len(runs) - 1}.get(run)
    if choice is None:
        try:
            choice = int(run) - 1
        except ValueError:
            raise ConfigError(f"--run {run!r}: use first, last or a run number from 1") from None
        if not 0 <= choice < len(runs):
            raise ConfigError(f"--run {run}: {source} holds {len(runs)} runs ({listing})")
    notes.append(f"{source}: holds {len(runs)} runs ({listing}); read run {choice + 1}")
    keep = np.zeros(len(records.loss), dtype=bool)
    keep[slice(*runs[choice])] = True
    return _selected(records, keep)


def _assemble(records: Records, fmt: str, source: str, notes: list[str], run: str | None = None,
              first_epoch: int = 0, metric: str | None = None) -> ImportedCurve:
    """Records as a curve: one run, numbered by step (epoch x total + batch where the log says its total),
    by epoch for per-epoch lines, else by position."""
    if not len(records.loss):
        raise BaselineError(f"{source}: no values read")
    records = _pick_run(records, run, source, notes)
    n = len(records.loss)
    has_step, has_epoch = not np.any(np.isnan(records.step)), not np.any(np.isnan(records.epoch))
    if has_step and not np.any(np.isnan(records.total)):
        epochs = (records.epoch - first_epoch) if has_epoch else np.zeros(n)
        steps = epochs * records.total + records.step
    elif has_step:
        steps = records.step
    elif has_epoch:
        steps = records.epoch
        notes.append(f"{source}: one point per epoch; steps are epoch numbers")
    else:
        steps = np.arange(n, dtype=np.float64)
    if np.any(np.isnan(steps)):  # some records with step numbers, some without
        steps = np.arange(n, dtype=np.float64)
        notes.append(f"{source}: not every record has a step number; steps are numbered by position")
    elif n > 1 and np.any(np.diff(steps) <= 0):  # iterations restart each epoch, the total not given
        steps = np.arange(n, dtype=np.float64)
        notes.append(f"{source}: iteration numbers restart each epoch; steps are numbered by position in the log")
    lines = (records.line(0), records.line(n - 1))
    return ImportedCurve(Curve(steps.astype(np.int64), records.loss), source, fmt, notes, lines=lines, metric=metric,
                         line_of=records.line)


def _records_of(scan: Scan) -> Records:
    nan = np.full(scan.count, np.nan)
    cols = scan.columns
    loss = cols["loss"] if "loss" in cols else cols["group1"]
    return Records(loss, cols.get("epoch", nan), cols.get("step", nan), cols.get("total", nan), scan.line)


def _compile(pattern: str, key: str, rank: int | None = None) -> re.Pattern:
    """The pattern for metric `key`; with `rank`, matching only that rank's records (the others are never
    turned into strings: 3/4 of a 4-rank log's work saved)."""
    if rank is not None:
        pattern = pattern.replace(r"(?P<rank>\d+)", f"(?P<rank>{int(rank)})")
    return re.compile(pattern.replace("{key}", re.escape(key)))


WHOLE = re.compile(r"[-+]?\d+")


def _refuse_cut_at_comma(scan: Scan, records: Records, what: str) -> None:
    """Numbers written with a decimal comma (`2,302585`, or a thousands separator) are cut at it by every
    pattern here and by loss.py's own: read as 2. Only looked for when every value read is whole (as cut
    ones are); then the first such records are checked for a digit after a comma."""
    loss = records.loss[np.isfinite(records.loss)]
    if not len(loss) or np.any(loss != np.round(loss)):
        return
    group = "loss" if "loss" in scan.regex.groupindex else 1
    for m in islice(scan.regex.finditer(scan.text), 50):
        end = m.end(group)
        if WHOLE.fullmatch(m.group(group)) and scan.text[end:end + 1] == "," and scan.text[end + 1:end + 2].isdigit():
            number = re.match(r"[\d,.]*", scan.text[m.start(group):m.start(group) + 40])[0]
            raise BaselineError(f"{scan.source}:{_line_of(scan.text, m.start(group))}: {what} {number!r} is written "
                                f"with a comma (a decimal comma?), which loss.py and this reader cut to "
                                f"{m.group(group)}; rewrite the log with decimal points (LC_NUMERIC=C)")


def parse_dllogger(text: str, rank: int = 0, source: str = "log", run: str | None = None,
                   metric: str | None = None) -> ImportedCurve:
    """ModelZoo dllogger stdout: every record of `rank` in the whole text (glued lines included)."""
    notes: list[str] = []
    key = metric or "train.loss"

    def records_by_rank() -> dict[int, int]:  # every rank's record count; one-digit strings are shared: cheap
        ranks = _compile(DLLOGGER_RANK_OF, key).findall(text)
        counts: dict[int, int] = {}
        for r in set(ranks):
            counts[int(r)] = counts.get(int(r), 0) + ranks.count(r)
        return counts

    # the listing of every rank (a pass of its own) beside the scan of the rank's records, on a long log; the
    # scan finds nothing where the listing finds no rank (its records have one), so the order changes nothing
    with _Beside(records_by_rank, len(text)) as listing:
        # every record of the rank has its Epoch/Iteration prefix (the usual case: one scan), or some lack it
        scan = Scan(_compile(DLLOGGER_RECORD, key, rank), text, source, ("epoch", "step", "loss"))
        by_rank = listing.result()
    if by_rank:
        found = sorted(by_rank)
        if rank not in found:
            raise BaselineError(f"{source}: no records of rank {rank} (the log has ranks "
                                f"{', '.join(map(str, found))}); pick one with --rank")
        own = by_rank[rank]
        with_steps = scan.count
        if with_steps != own:
            scan = Scan(_compile(DLLOGGER_RANKED, key, rank), text, source, ("loss",))
            if with_steps:
                notes.append(f"{source}: {scan.count - with_steps} record(s) have no Epoch/Iteration prefix; "
                             f"steps are numbered by position")
        records = _records_of(scan)
        if with_steps != own:
            records.step = np.full(scan.count, np.nan)
        _refuse_cut_at_comma(scan, records, key)
        if len(found) > 1:
            notes.append(f"{source}: the log holds ranks {', '.join(map(str, found))}; read rank {rank}")
        return _assemble(records, "dllogger", source, notes, run, metric=key)
    # no rank field: the key alone, then ModelZoo's own fallback, numbered by position as ModelZoo does
    for pattern, label, read in ((KEY.replace("{key}", re.escape(key)) + r"\s*:\s*" + TOKEN, f"`{key} : <x>`", key),
                                 (MODELZOO_FALLBACK, "ModelZoo's fallback pattern `loss <x>`", "loss")):
        scan = Scan(re.compile(pattern), text, source)
        if scan.count:
            notes.append(f"{source}: no dllogger records with a rank; read {scan.count} values with {label}, "
                         f"numbered by position")
            records = _records_of(scan)
            _refuse_cut_at_comma(scan, records, read)
            return _assemble(records, "dllogger", source, notes, run, metric=read)
    raise BaselineError(f"{source}: no ModelZoo dllogger records (`rank : {rank}  {key} : <x>`) found; "
                        f"give the format with --format, or a pattern with --regex")


def parse_lines(text: str, fmt: str, source: str = "log", run: str | None = None,
                metric: str | None = None) -> ImportedCurve:
    """One of LINE_FORMATS (timm, mmengine, epoch, step): the first of its metric names the log holds."""
    spec = LINE_FORMATS[fmt]
    for key in ((metric,) if metric else spec.keys):
        scan = Scan(_compile(spec.pattern, key), text, source, ("epoch", "step", "total", "loss"))
        if scan.count:
            notes = []
            others = _other_losses(text, scan, key)
            if others:
                notes.append(f"{source}: read {key}; the lines also hold {', '.join(others)} (pick one with --metric)")
            records = _records_of(scan)
            _refuse_cut_at_comma(scan, records, key)
            return _assemble(records, fmt, source, notes, run, spec.first_epoch, key)
    tried = ", ".join(f"`{k}`" for k in ((metric,) if metric else spec.keys))
    raise BaselineError(f"{source}: no {fmt} lines with {tried} found (e.g. `{spec.example}`); "
                        f"give another value with --metric, or a pattern with --regex")


def _other_losses(text: str, scan: Scan, key: str) -> list[str]:
    """Other loss-like names on the first matched line (val_loss, loss_cls, ...), so the note can name them."""
    m = next(scan.regex.finditer(text), None)
    if m is None:
        return []
    a, b = text.rfind("\n", 0, m.start()) + 1, text.find("\n", m.start())
    line = text[a:b if b >= 0 else len(text)]
    names = re.findall(r"(?<![\w.])([A-Za-z][\w./]*loss[\w.]*|loss[\w.]+)(?=\s*[:=]?\s*[-+.\d])", line)
    return sorted({n for n in names if n != key})


def parse_epoch_lines(text: str, key: str | None = None, source: str = "log", run: str | None = None) -> ImportedCurve:
    """`Epoch[e]: train_loss x ... | val_loss z` or DeiT's `Epoch: [e]  [i/n] ... loss: x`: the train loss
    unless `key` names another."""
    return parse_lines(text, "epoch", source, run, key)


def parse_regex(text: str, pattern: str, source: str = "log", run: str | None = None) -> ImportedCurve:
    """A user's pattern, searched over the whole text: a `loss` group (or its only group) and optionally
    a `step` group; without one, values are numbered by position."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--regex {pattern!r}: not a valid regular expression ({exc})") from None
    names = regex.groupindex
    if "loss" not in names and regex.groups != 1:
        raise ConfigError(f"--regex {pattern!r}: needs a group named `loss` (?P<loss>...) or exactly one group")
    wanted = tuple(n for n in ("loss", "step", "group1") if n in names or n == "group1" and "loss" not in names)
    scan = Scan(regex, text, source, wanted, limit_s=REGEX_SECONDS + len(text) / REGEX_MIN_CHARS_PER_S)
    if not scan.count:
        raise BaselineError(f"{source}: the pattern {pattern!r} matches nothing")
    records = _records_of(scan)
    _refuse_cut_at_comma(scan, records, "loss")
    if "step" in names and np.any(records.step != np.round(records.step)):
        raise BaselineError(f"{source}: the `step` group of {pattern!r} captures numbers that are not whole")
    notes = [] if "step" in names else [f"{source}: the pattern has no `step` group; values numbered by position"]
    return _assemble(records, "regex", source, notes, run)


def _dllogger_step(step) -> tuple[int, int] | None:
    """dllogger's step field: an int, [epoch, iteration, ...], or {"epoch": e, "iteration"/"step": i}; None
    for records that are not per-step (PARAMETER, epoch summaries given as [epoch] only)."""
    if isinstance(step, bool):
        return None
    if isinstance(step, int):
        return 0, step
    if isinstance(step, list) and len(step) >= 2 and all(isinstance(s, int) for s in step[:2]):
        return step[0], step[1]
    if isinstance(step, dict):
        it = step.get("iteration", step.get("step"))
        if isinstance(it, int):
            return int(step.get("epoch", 0)), it
    return None


def parse_dllogger_json(text: str, rank: int = 0, key: str | None = None, source: str = "log",
                        run: str | None = None) -> ImportedCurve:
    """dllogger's JSON-lines stream: one `DLLL {...}` record a line (other lines ignored when the records are
    prefixed), or one bare JSON record a line."""
    key = key or "train.loss"
    epochs, iterations, loss, line_numbers, ranks, notes = [], [], [], [], set(), []
    skipped = 0
    prefixed = "DLLL " in text
    lines = text.split("\n")
    unterminated = len(lines) if lines[-1].strip() else 0  # the last line has no line end
    for line_no, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or (prefixed and not line.startswith("DLLL ")):
            continue
        body = line[5:] if line.startswith("DLLL ") else line
        try:
            record = json.loads(body)
        except json.JSONDecodeError:
            if line_no == unterminated:  # a record cut short as the log was being written: not a value
                notes.append(f"{source}: left out the last line ({line_no}), an incomplete JSON record without a "
                             f"line end (the log was cut while being written?): {line[-100:]!r}")
                break
            raise BaselineError(f"{source}:{line_no}: not a JSON record (a damaged line?)") from None
        data = record.get("data") if isinstance(record, dict) else None
        step = _dllogger_step(record.get("step")) if isinstance(record, dict) else None
        if not isinstance(data, dict) or step is None or key not in data:
            skipped += 1
            continue
        record_rank = data.get("rank", record.get("rank", 0))
        ranks.add(record_rank)
        if record_rank != rank:
            continue
        value = data[key]
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise BaselineError(f"{source}:{line_no}: {key} {value!r} is not a number") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BaselineError(f"{source}:{line_no}: {key} {value!r} is not a number")
        epochs.append(step[0])
        iterations.append(step[1])
        loss.append(float(value))
        line_numbers.append(line_no)
    if not loss:
        raise BaselineError(f"{source}: no dllogger JSON records with data[{key!r}] for rank {rank}")
    if skipped:
        notes.append(f"{source}: skipped {skipped} record(s) without a per-step {key}")
    if len(ranks) > 1:
        notes.append(f"{source}: the log holds ranks {', '.join(map(str, sorted(ranks)))}; read rank {rank}")
    nan = np.full(len(loss), np.nan)
    records = Records(np.array(loss), np.array(epochs, dtype=np.float64), np.array(iterations, dtype=np.float64),
                      nan, lambda k: line_numbers[k])
    return _assemble(records, "dllogger-json", source, notes, run, metric=key)


def parse_curve_json(data, source: str = "curve") -> ImportedCurve:
    """{"steps", "loss"} or [{"step", "loss"}, ...]; a baseline file (schema_version) comes back whole."""
    if isinstance(data, dict) and "schema_version" in data:
        from pipelines.baselines import baseline_from_json

        baseline = baseline_from_json(data, source)
        return ImportedCurve(baseline.curve, source, "json", [], baseline)
    if isinstance(data, dict) and isinstance(data.get("loss"), list):
        loss = data["loss"]
        steps = data.get("steps", data.get("step"))
        if steps is None:
            steps = list(range(len(loss)))
    elif isinstance(data, list) and all(isinstance(r, dict) and "loss" in r for r in data):
        loss = [r["loss"] for r in data]
        steps = [r.get("step", i) for i, r in enumerate(data)]
    else:
        raise BaselineError(f"{source}: expected {{\"steps\": [...], \"loss\": [...]}} or a list of "
                            f"{{\"step\": s, \"loss\": v}} records")
    if not isinstance(steps, list) or len(steps) != len(loss):
        raise BaselineError(f"{source}: 'steps' and 'loss' must be lists of equal length")
    if not loss:
        raise BaselineError(f"{source}: the curve has no steps")
    for what, values in (("loss", loss), ("steps", steps)):
        bad = next((v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool)), None)
        if bad is not None:
            raise BaselineError(f"{source}: {what} holds a non-numeric value {bad!r}")
    if any(s != int(s) for s in steps):
        raise BaselineError(f"{source}: step numbers must be whole numbers")
    return ImportedCurve(Curve(np.array(steps, dtype=np.int64), np.array(loss, dtype=np.float64)), source, "json")


def read_mlflow_run(run_id: str, tracking_uri: str, metric: str = "loss") -> ImportedCurve:
    """The full history of a run's metric (the train stage logs `loss` at every step)."""
    from cait.errors import TrackingError

    try:
        from mlflow.tracking import MlflowClient

        history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, metric)
    except Exception as exc:  # MlflowException, connection and database errors alike
        raise TrackingError(f"MLflow run {run_id} in {tracking_uri}: cannot read metric {metric!r} "
                            f"({str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__}); "
                            f"check the run id and MLFLOW_TRACKING_URI") from None
    if not history:
        raise BaselineError(f"MLflow run {run_id}: no {metric!r} metric logged")
    by_step = {}
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m.value  # a step logged twice (a resumed run): the last value
    notes = [] if len(by_step) == len(history) else [
        f"MLflow run {run_id}: {len(history) - len(by_step)} step(s) logged twice; kept the last value"]
    steps = sorted(by_step)
    return ImportedCurve(Curve(np.array(steps), np.array([by_step[s] for s in steps])), f"mlflow:{run_id}",
                         "mlflow", notes)


def read_input(path: Path, spec: str) -> bytes:
    """The file's bytes, decompressed when they are gzip, bzip2 or xz (recognised by content, not by name)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BaselineError(f"{spec}: no such file (and not an MLflow run id)") from None
    except IsADirectoryError:
        raise BaselineError(f"{spec}: is a folder; name the log file") from None
    for magic, name, decompress in MAGIC:
        if data.startswith(magic):
            try:
                return decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
                raise BaselineError(f"{spec}: a {name} file that cannot be decompressed ({exc}); "
                                    f"is it complete?") from None
    return data


def decode_text(data: bytes, spec: str) -> str:
    """Text of a log: UTF-16 when it says so (a BOM), else UTF-8 with undecodable bytes replaced; binary
    data is an error naming the file."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    if b"\x00" in data[:65536]:
        raise BaselineError(f"{spec}: binary data, not a text log or curve (compressed in a format other than "
                            f"gzip, bzip2 or xz? decompress it first)")
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")


def plain_text(text: str, rank: int, source: str, notes: list[str]) -> tuple[str, str]:
    """(text, the same with other ranks' lines blanked): ANSI colour codes removed, CRLF made LF, torchrun's
    `[rankN]:` prefixes taken off. Blanking keeps line numbers as the file has them."""
    if "\x1b" in text:
        text = ANSI_ESCAPE.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if ("[rank" not in text and "[default" not in text) or not TORCHRUN_PREFIX.search(text):
        return text, text
    ranks = sorted({int(r) for r in TORCHRUN_PREFIX.findall(text)})
    own = re.sub(rf"(?m)^\[(?:rank|default)(?!{rank}\])\d+\]:[^\n]*", "", text)
    if len(ranks) > 1:
        notes.append(f"{source}: lines prefixed by torchrun for ranks {', '.join(map(str, ranks))}; "
                     f"read rank {rank}")
    return TORCHRUN_PREFIX.sub("", text), TORCHRUN_PREFIX.sub("", own)


def _search(pattern: str, key: str, text: str) -> bool:
    return _compile(pattern, key).search(text) is not None


def detect_format(text: str, metric: str | None = None) -> str:
    """The first format whose records the (plain) text holds; JSON only if it parses as JSON."""
    head = text[:65536].lstrip()
    lines = [line.strip() for line in head.splitlines()[:50] if line.strip()]
    first = lines[0] if lines else ""
    if head[:1] in "{[":
        try:
            json.loads(text)
            return "json"
        except json.JSONDecodeError:
            pass
    if any(line.startswith("DLLL {") for line in lines) or _json_record(first):
        return "dllogger-json"
    if "step" in first.split(",") and "loss" in first.split(","):
        return "csv"
    key = metric or "train.loss"
    if key in text and (_search(DLLOGGER_RANKED, key, text) or _search(KEY + r"\s*:\s*" + TOKEN, key, text)):
        return "dllogger"
    for spec in LINE_FORMATS.values():
        if spec.hint and spec.hint not in text:
            continue
        if any(_search(spec.pattern, k, text) for k in ((metric,) if metric else spec.keys)):
            return spec.name
    if not metric and re.search(MODELZOO_FALLBACK, text):
        return "dllogger"
    return ""


def _json_record(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and isinstance(record.get("data"), dict)


def _unknown(text: str, spec: str, metric: str | None) -> BaselineError:
    """What the file looked like and which flag to give, when no format finds a loss in it."""
    shown = [line.strip()[:80] for line in text[:65536].splitlines() if line.strip()][:3]
    key = f"`{metric}`" if metric else "a loss"
    tried = "dllogger, dllogger-json, timm, mmengine, epoch, step, ModelZoo's `loss <x>`, csv, json"
    if JSON_START.match(text[:65536]):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return BaselineError(f"{spec}: not valid JSON (at character {exc.pos}; truncated?) and no text log "
                                 f"format finds {key} in it")
    return BaselineError(f"{spec}: cannot tell the log's format: no format finds {key} in it (tried {tried}); "
                         f"it starts: {' | '.join(repr(s) for s in shown) or '(blank lines)'}; give a pattern "
                         f"with --regex 'loss=(?P<loss>[0-9.eE+-]+)', or --format and --metric")


def _parse_text(text: str, own: str, fmt: str, spec: str, rank: int, regex: str | None, run: str | None,
                metric: str | None, notes: list[str]) -> ImportedCurve:
    if fmt == "dllogger":
        got = parse_dllogger(text, rank, spec, run, metric)
    elif fmt == "dllogger-json":
        got = parse_dllogger_json(text, rank, metric, spec, run)
    elif fmt == "regex":
        if not regex:
            raise ConfigError("--format regex needs --regex PATTERN")
        got = parse_regex(own, regex, spec, run)
    else:
        got = parse_lines(own, fmt, spec, run, metric)
    got.notes[:0] = notes
    return got


def check_values(got: ImportedCurve, what: str | None = None) -> None:
    """Refuse values no training prints: a magnitude above LOSS_LIMIT (naming the first, its line and field), or
    exactly 0 at every step (a broken logger; a single 0 can be real, a whole curve of them never is)."""
    loss, name = got.curve.loss, what or got.metric or "loss"
    if not len(loss):
        return
    with np.errstate(invalid="ignore"):
        huge = np.flatnonzero(np.isfinite(loss) & (np.abs(loss) > LOSS_LIMIT))
    if len(huge):
        i = int(huge[0])
        where = f"{got.source}:{got.line_of(i)}" if got.line_of else got.source
        raise BaselineError(f"{where}: {name} at step {int(got.curve.steps[i])} is {float(loss[i])!r}, beyond any "
                            f"loss a float32 training prints (|x| <= 2**64 ~ 1.8e19; {len(huge)} such value(s)): a "
                            f"corrupt file or a sentinel value; check that {name} is the loss")
    finite = loss[np.isfinite(loss)]
    if len(finite) and not np.any(finite):
        lines = f" (lines {got.lines[0]}-{got.lines[1]})" if got.lines else ""
        raise BaselineError(f"{got.source}: {name} is exactly 0 at every one of its {len(loss)} steps{lines}, which "
                            f"no training's loss is (a broken logger?); check the log, or name another field with "
                            f"--metric")


def _regular_size(path: Path) -> int | None:
    """The size of a regular file (pipes and devices have none that means anything)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def load_curve(spec: str, fmt: str = "auto", rank: int = 0, regex: str | None = None,
               tracking_uri: str | None = None, metric: str | None = None, run: str | None = None) -> ImportedCurve:
    """Read a curve from a file path or an MLflow run id (`mlflow:<id>`, `runs:/<id>` or a bare id).

    `metric`: the value to read (default: each format's train loss; `loss` for MLflow); `run`: which run of
    a log holding several (first, last or a number from 1). Values no training prints are refused
    (`check_values`); so is a file whose size changes while it is read (a log still being written)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if regex is not None and fmt == "auto":
        fmt = "regex"
    path = Path(spec)
    mlflow_run = MLFLOW_ID.match(spec)
    if fmt == "mlflow" or (fmt == "auto" and mlflow_run and not path.exists()):
        if not mlflow_run:
            raise ConfigError(f"{spec!r}: not an MLflow run id (32 hex digits, optionally mlflow:<id>)")
        if not tracking_uri:
            raise ConfigError(f"{spec}: an MLflow run id needs a tracking store (MLFLOW_TRACKING_URI or tracking.uri)")
        got = read_mlflow_run(mlflow_run[1], tracking_uri, metric or "loss")
        check_values(got, metric or "loss")
        return got
    size = _regular_size(path)
    got = _load_file(path, spec, fmt, rank, regex, metric, run)
    after = _regular_size(path)
    if size is not None and after != size:
        raise BaselineError(f"{spec}: the file changed size while it was read ({size} -> {after} bytes): a log still "
                            f"being written; compare it when the run has finished (or compare a copy)")
    check_values(got)
    return got


def _load_file(path: Path, spec: str, fmt: str, rank: int, regex: str | None, metric: str | None,
               run: str | None) -> ImportedCurve:
    data = read_input(path, spec)
    head = decode_text(data[:65536], spec)
    first = head.lstrip().split("\n", 1)[0].strip().split(",")
    if fmt == "csv" or (fmt == "auto" and "step" in first and "loss" in first):  # straight from the bytes
        return ImportedCurve(parse_curve_csv(data, spec, only_loss=True), spec, "csv")
    text = decode_text(data, spec)
    del data
    if not text or text.isspace():
        raise BaselineError(f"{spec}: the file is empty")
    notes: list[str] = []
    text, own = plain_text(text, rank, spec, notes)
    if fmt == "auto":
        fmt = detect_format(text, metric)
        if not fmt:
            raise _unknown(text, spec, metric)
    if fmt == "json":
        try:
            return parse_curve_json(json.loads(text), spec)
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{spec}: not valid JSON (at character {exc.pos}; truncated?)") from None
    if fmt == "csv":
        return ImportedCurve(parse_curve_csv(text, spec, only_loss=True), spec, "csv")
    got = _parse_text(text, own, fmt, spec, rank, regex, run, metric, notes)
    cut = text.rfind("\n") + 1
    tail = text[cut:].strip()
    # no line end after the last line: read as loss.py reads it (files copied out of CI often end so)
    if tail and not any(n.startswith(f"{spec}: left out the last line") for n in got.notes):
        got.notes.append(f"{spec}: the last line ({_line_of(text, cut)}) has no line end; read as loss.py reads it "
                         f"(were the log cut while being written, its last value could be cut short): "
                         f"{tail[-100:]!r}")
    return got
