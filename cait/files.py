"""Writing output files atomically: a reader sees the old file or the new one, never half of one.

Every output of every stage goes through here. The data is written to a temporary file in the same
folder (so the rename stays on one filesystem), flushed to disk, and renamed over the target only
when it is complete; on any failure the temporary file is removed and the old target is left as it
was. An `OSError` (disk full, read-only folder, a file where a folder should be) becomes one
`OutputError` naming the file and the cause, exit status 4.

    atomic_write_text(path, text)          # json, csv text, html
    atomic_write_bytes(path, data)
    with atomic_output(path) as tmp:       # for writers that want a path: savefig, torch.save, np.save
        fig.savefig(tmp)

The temporary name keeps the target's suffix (`overlay.<pid>.tmp.png`), because savefig and np.save
choose their format or extension from it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from cait.errors import OutputError

TMP_MARK = ".tmp"  # in every temporary name: `<stem>.<pid>.tmp<suffix>` (.gitignore: *.tmp.*)


def temp_path_for(path: Path) -> Path:
    """A temporary name next to `path`, unique per process (two processes never share one)."""
    return path.with_name(f"{path.stem}.{os.getpid()}{TMP_MARK}{path.suffix}")


def _fix_for(exc: OSError, path: Path) -> str:
    """What the user can do about the error, by its errno."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space and rerun"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {path.parent} writable and rerun"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"a file stands where a folder of {path} should be; move it away and rerun"
    if code == errno.EISDIR:
        return f"{path} is a folder; move it away and rerun"
    return "check the disk and the folder, then rerun"


def output_error(path: Path | str, exc: OSError) -> OutputError:
    """One line naming the file, the cause and the fix, e.g. `reports/default/report.html: cannot write:
    No space left on device (errno 28); free disk space and rerun`."""
    path = Path(path)
    cause = exc.strerror or str(exc) or exc.__class__.__name__
    code = f" (errno {exc.errno})" if exc.errno is not None else ""
    return OutputError(f"{path}: cannot write: {cause}{code}; {_fix_for(exc, path)}")


def ensure_folder(folder: Path | str) -> Path:
    """Create `folder` (and its parents); an OSError becomes an OutputError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(folder, exc) from None
    if not folder.is_dir():
        raise output_error(folder, OSError(errno.ENOTDIR, "Not a directory"))
    return folder


def check_writable(folder: Path | str) -> Path:
    """Create `folder` and prove a file can be written in it, before a stage does any work.

    A stage calls this first for each folder it writes, so that a read-only folder, or a file where the
    folder should be, stops it with one line before it trains or writes anything (nothing half-finished).
    """
    folder = ensure_folder(folder)
    probe = folder / f".write-probe.{os.getpid()}{TMP_MARK}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise output_error(folder, exc) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends without an error, flush it to disk and
    rename it to `path`. On any error the temporary file is removed and `path` is untouched; an OSError
    from the block or the rename becomes an OutputError naming `path`."""
    path = Path(path)
    ensure_folder(path.parent)
    tmp = temp_path_for(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise output_error(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise
    _fsync_folder(path.parent)


def replace_folder(built: Path | str, target: Path | str) -> Path:
    """Swap a completely built folder into place: the old one is moved aside first and removed only after
    the new one carries its name, so no moment leaves a half-deleted folder under the target's name."""
    import shutil

    built, target = Path(built), Path(target)
    old = target.with_name(f"{target.name}.{os.getpid()}.old")
    try:
        if target.exists():
            os.replace(target, old)
        os.replace(built, target)
    except OSError as exc:
        raise output_error(target, exc) from None
    shutil.rmtree(old, ignore_errors=True)
    return target


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str, *, newline: str | None = None) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path. `newline` as for open()."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)
    return Path(path)


def _fsync_file(path: Path) -> None:
    """The data is on disk before the rename makes it visible (else a crash can leave an empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself; some filesystems cannot sync a folder, which costs nothing but durability."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
