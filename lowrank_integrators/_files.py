"""Files the library writes: atomic replacement and output paths checked before any work.

Every file is written to a temporary file in its destination folder, flushed to disk and then
renamed over the destination (``os.replace``, atomic on POSIX and Windows within one file
system). A reader therefore sees the old file or the new one, never a torn one, whatever
happens during the write: an exception, an interruption, a full disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "check_output_dir",
    "check_output_file",
    "write_json",
    "write_text",
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it to ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path
        The destination; its folder must exist.
    mode : {"w", "wb"}
        Text (UTF-8) or binary.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    if target.exists() and not target.is_file() and not target.is_dir():
        # A device or a pipe (``/dev/null``, ``/dev/stdout``) is written in place: renaming a
        # file over it would replace the device node itself.
        with open(target, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> None:
    """Write ``data`` as strict JSON (no NaN) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def _probe(folder: Path, what: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    except OSError as exc:
        raise ValueError(f"{what}: cannot write into {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that ``path`` is (or can be created as) a writable folder; create it.

    Raises
    ------
    ValueError
        Naming ``what`` and the path: an existing file in the way, a parent that is a file, or
        a folder that cannot be written.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: {folder} exists and is not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what}: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what}: cannot create {folder} ({exc.strerror or exc})") from None
    _probe(folder, what)
    return folder


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that a file can be written at ``path``; create its folder if needed.

    Raises
    ------
    ValueError
        Naming ``what`` and the path: ``path`` is a folder, or its folder cannot be created or
        written.
    """
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{what}: {target} is a folder; give a file name")
    if target.exists() and not target.is_file():
        if not os.access(target, os.W_OK):
            raise ValueError(f"{what}: {target} cannot be written")
        return target  # a device or a pipe, written in place
    check_output_dir(target.parent if str(target.parent) else Path("."), what)
    return target
