"""Files are replaced atomically; output paths are checked before any work."""

from __future__ import annotations

import errno
import os
import pathlib
import tempfile

import pytest

from lowrank_integrators import _files
from lowrank_integrators._files import (
    atomic_write,
    check_output_dir,
    check_output_file,
    write_json,
    write_text,
)


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as fh:
        fh.write('{"v": 2, "half')
        raise KeyboardInterrupt
    assert target.read_text() == '{\n "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_full_disk_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    write_text(target, "old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    write_text(target, "old")

    def crash(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(_files.os, "replace", crash)
    with pytest.raises(OSError):
        write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_output_folder_checks_name_the_problem(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--out: .* exists and is not a folder"):
        check_output_dir(a_file, "--out")
    with pytest.raises(ValueError, match=r"--out: .*file is a file, not a folder"):
        check_output_dir(a_file / "sub", "--out")
    created = check_output_dir(tmp_path / "new" / "deeper", "--out")
    assert created.is_dir()
    with pytest.raises(ValueError, match=r"--json: .* is a folder"):
        check_output_file(tmp_path, "--json")
    assert check_output_file(tmp_path / "x" / "s.json", "--json").parent.is_dir()


def test_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(ValueError, match=r"--out: cannot write into .*Permission denied"):
        check_output_dir(tmp_path, "--out")


def test_a_folder_without_write_permission_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user can write into read-only folders (root)")
        with pytest.raises(ValueError, match="cannot write into"):
            check_output_dir(folder, "--out")
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(not os.path.exists(os.devnull) or os.name != "posix", reason="POSIX devices")
def test_a_device_is_written_in_place_never_replaced():
    """``--json /dev/null`` must not turn the device node into a regular file."""
    target = pathlib.Path(os.devnull)
    check_output_file(target)
    with atomic_write(target) as fh:
        fh.write("{}\n")
    assert target.exists() and not target.is_file()
