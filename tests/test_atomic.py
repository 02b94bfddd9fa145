"""Atomic writes: permissions like an ordinary write, and no leftovers of killed writes."""

from __future__ import annotations

import os
import stat

import pytest

from pixio_robot.atomic import atomic_dir, atomic_path, run_folder, write_bytes


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_bytes(tmp_path / "a.bin", b"x")
        with atomic_dir(tmp_path / "run") as tmp:
            (tmp / "w.bin").write_bytes(b"y")
        with open(tmp_path / "plain.bin", "wb") as f:  # what an ordinary write gets
            f.write(b"z")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "plain.bin") == 0o666 & ~umask
    assert mode(tmp_path / "run") == 0o777 & ~umask


def test_next_write_removes_what_a_killed_write_left(tmp_path):
    # what SIGKILL during a write of `last` (a folder) and `model.bin` (a file) leaves behind
    (tmp_path / ".tmp-last.abc123").mkdir()
    (tmp_path / ".tmp-last.abc123" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".tmp-last.old-12345678").mkdir()
    (tmp_path / ".tmp-model.bin.xyz").write_bytes(b"half")
    (tmp_path / ".tmp-lastly.keep").write_bytes(b"another path's")  # not a write of `last`
    with atomic_dir(tmp_path / "last") as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    with atomic_path(tmp_path / "model.bin") as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-lastly.keep", "last", "model.bin"]


def test_a_write_in_progress_in_another_process_is_not_taken_for_a_stray(tmp_path):
    # Two runs sharing a cache write the same file at once: the second write must leave the
    # first one's temporary file alone while its writer lives, and remove it once it is dead.
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = tmp_path / f".tmp-tokens.bin.{os.getppid()}-abc"  # the parent of this process runs
    gone = tmp_path / f".tmp-tokens.bin.{int(dead.stdout)}-xyz"
    live.write_bytes(b"being written")
    gone.write_bytes(b"half")
    write_bytes(tmp_path / "tokens.bin", b"whole")
    assert live.is_file() and not gone.exists()


def test_two_processes_writing_one_path_at_once_both_succeed(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.starmap(
            _write_many, [(str(tmp_path / "shared.bin"), b"a" * 2**18), (str(tmp_path / "shared.bin"), b"b" * 2**18)]
        )
    assert (tmp_path / "shared.bin").read_bytes() in (b"a" * 2**18, b"b" * 2**18)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def _write_many(path: str, data: bytes) -> None:
    for _ in range(50):
        write_bytes(path, data)


def test_a_run_folder_goes_again_only_if_its_setup_failed_and_it_was_new(tmp_path):
    new, old = tmp_path / "a" / "new", tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("x")
    for folder in (new, old):
        with pytest.raises(ValueError), run_folder(folder) as f:
            (f / "encoder.safetensors").write_bytes(b"")
            raise ValueError("refused")
    assert not new.exists() and (old / "keep.txt").is_file()
    with run_folder(new) as f:
        (f / "ok").write_text("")
    assert (new / "ok").is_file()
