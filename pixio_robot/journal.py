"""Roll-back journals for folders that a third-party writer (LeRobot) changes in place.

Before a writer appends to a folder, `begin` records the list of its files and copies the few
that will be rewritten in place; `end` drops the journal once the append is complete. A hard
kill in between leaves the journal, and `rollback` (called by every reader in the toolkit before
it reads the folder) deletes the files the append created and restores the rewritten ones, so
the folder is exactly as it was at the last completed append.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .atomic import write_json

JOURNAL = "meta/.pixio_journal.json"
BACKUP = "meta/.pixio_backup"


def _files(root: Path) -> list[str]:
    return sorted(
        rel
        for p in root.rglob("*")
        if p.is_file() and not (rel := str(p.relative_to(root))).startswith((JOURNAL, BACKUP))
    )


def begin(root: Path, rewritten: Sequence[str]) -> None:
    """From here on, what is written into `root` can be rolled back."""
    backup = root / BACKUP
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir(parents=True)
    for rel in rewritten:
        if (root / rel).is_file():
            shutil.copy2(root / rel, backup / rel.replace("/", "__"))
    write_json(root / JOURNAL, {"files": _files(root), "rewritten": list(rewritten)})


def end(root: Path) -> None:
    """The append is complete: keep it."""
    (root / JOURNAL).unlink()
    shutil.rmtree(root / BACKUP, ignore_errors=True)


def pending(root: Path) -> bool:
    return (Path(root) / JOURNAL).is_file()


def rollback(root: str | os.PathLike) -> bool:
    """Undo an append that was killed before `end`; True if there was one."""
    root = Path(root)
    journal = root / JOURNAL
    if not journal.is_file():
        return False
    record = json.loads(journal.read_text())
    keep = set(record["files"])
    for rel in _files(root):
        if rel not in keep:
            (root / rel).unlink()
    backup = root / BACKUP
    for rel in record.get("rewritten", ()):
        saved = backup / rel.replace("/", "__")
        if saved.is_file():
            tmp = root / f"{rel}.restore"
            shutil.copy2(saved, tmp)
            os.replace(tmp, root / rel)
    for d in root.iterdir():
        if d.is_dir() and d != backup:
            remove_empty_dirs(d)
    journal.unlink()
    shutil.rmtree(backup, ignore_errors=True)
    logging.getLogger(__name__).warning("%s: rolled back an interrupted recording segment", root)
    return True


def remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    if not any(top.iterdir()):
        top.rmdir()
