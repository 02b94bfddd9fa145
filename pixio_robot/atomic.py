"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything the toolkit writes (checkpoints, features, results, recordings) goes through
`atomic_path`: write to a temporary name in the same folder, flush it to disk, then rename.
A crash or a kill leaves at most a stray `.tmp-*` file, which readers never look at and the
next write of the same path removes. Temporary names carry the writer's process id, so that two
processes writing the same path at once (two runs sharing a token cache) never take each other's
half-written file for a stray: only a dead process's leftovers are removed.

Temporary files get the permissions of an ordinary `open()` (0666 less the umask), not
mkstemp's 0600: a run's weights and metadata must be readable by colleagues on a shared machine
like the files written beside them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f"{TMP_PREFIX}{path.name}.{os.getpid()}-"


def _writer_alive(stale: Path, path: Path) -> bool:
    """Whether the process named in a temporary name (`.tmp-<name>.<pid>-...`) still runs here."""
    pid = stale.name[len(TMP_PREFIX) + len(path.name) + 1 :].partition("-")[0]
    if not pid.isdigit():
        return False  # no writer named (`.old-` folders, names of earlier versions)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _remove_stale(path: Path) -> None:
    """Delete what a killed earlier write of `path` left (its `.tmp-<name>.*` siblings whose
    writer is gone); a write in progress in another process is left alone."""
    import shutil

    for stale in path.parent.glob(f"{TMP_PREFIX}{glob.escape(path.name)}.*"):
        if _writer_alive(stale, path):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it into place, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; on success it takes `path`'s place
    (replacing an existing folder), else it is deleted. Readers see the old folder or the new
    one, whole; only between two renames is there briefly no folder at `path`."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    old = None
    try:
        yield tmp
        for f in tmp.rglob("*"):
            _fsync(f)
        if path.exists():
            old = path.parent / f"{TMP_PREFIX}{path.name}.old-{tmp.name[-8:]}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def run_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Create a run's folder for the setup inside the block (an encoder drawn into it, caches);
    if the setup fails and the folder did not exist before, remove it, so a refused command
    leaves nothing behind. A folder that existed (a resumed run) is never touched."""
    import shutil

    path = Path(path)
    fresh = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, fmt: str, what: str, fix: str = "") -> dict:
    """A JSON file the toolkit wrote, checked to carry `"format": fmt`; one clear error line
    naming `what` it should be (and `fix`, what to do) otherwise."""
    from .errors import PixioError

    path = Path(path)
    hint = f": {fix}" if fix else ""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PixioError(f"{path}: unreadable {what} ({e}){hint}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else None
        raise PixioError(f"{path}: not {what} (format {found!r}, expected {fmt!r}){hint}")
    return data


def _fsync(path: Path) -> None:
    if path.is_dir():
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # The rename itself must reach the disk, or a power cut can bring back the old name.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
