"""Atomic output: a file or a directory appears whole or not at all.

A decompressor that dies half-way (disk full, Ctrl-C, a checksum error in the
fifth of ten images) must not leave a truncated file where the user expects a
good one, nor overwrite a good file with a bad one. Both helpers here write to
a temporary sibling on the same file system and rename it into place only
after everything was written and flushed; :func:`os.replace` is atomic on
POSIX and on Windows for files of one file system.

Temporary names start with ``.`` and contain ``.tmp-`` so a leftover from a
killed process (``SIGKILL`` leaves no chance to clean up) is recognisable.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

StrPath = str | os.PathLike[str]

_TMP_TAG = ".tmp-"
_MAX_NAME_TRIES = 100


def _temp_sibling_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{_TMP_TAG}{secrets.token_hex(6)}")


def _fsync_directory(directory: Path) -> None:
    """Persist a rename on POSIX; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp_file(final: Path) -> tuple[int, Path]:
    """Open a new file beside ``final``; mode 0o666 minus the umask, as open() would."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_MAX_NAME_TRIES):
        tmp = _temp_sibling_name(final)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {final}")


def atomic_write_bytes(path: StrPath, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path`` as a Path.

    The bytes go to a temporary file in the same directory, which is flushed,
    fsynced and renamed over ``path``. On any error (``OSError`` such as
    ``ENOSPC``, ``KeyboardInterrupt``) the temporary file is removed, ``path``
    keeps its previous content (or stays absent), and the error propagates
    unchanged.
    """
    final = Path(path)
    fd, tmp = _create_temp_file(final)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(final.parent)
    return final


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk before it is renamed into place."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _make_temp_directory(final: Path) -> Path:
    for _ in range(_MAX_NAME_TRIES):
        tmp = _temp_sibling_name(final)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary directory beside {final}")


def _merge_into(tmp: Path, final: Path) -> None:
    """Move every file of ``tmp`` into ``final`` (which exists), replacing files.

    If a rename fails, the new files already moved that did not replace an
    existing file are removed again before the error propagates. (A file that
    replaced an older one keeps its new, complete content: the old one is gone
    once :func:`os.replace` returned.)
    """
    created: list[Path] = []
    made_dirs: list[Path] = []
    try:
        for root, dirs, files in os.walk(tmp):
            rel = Path(root).relative_to(tmp)
            target_dir = final / rel
            for d in sorted(dirs):
                target = target_dir / d
                if not target.is_dir():
                    os.mkdir(target)
                    made_dirs.append(target)
            for name in sorted(files):
                target = target_dir / name
                existed = os.path.lexists(target)
                os.replace(Path(root) / name, target)
                if not existed:
                    created.append(target)
    except BaseException:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                os.unlink(p)
        for made in reversed(made_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(made)
        raise


@contextlib.contextmanager
def atomic_directory(final_dir: StrPath) -> Iterator[Path]:
    """Context manager: yield a temporary directory that becomes ``final_dir``.

    Write the output files into the yielded directory. When the block exits
    normally, the directory is renamed to ``final_dir`` if that does not exist;
    if it exists (empty or not), the new files are moved into it one by one
    with :func:`os.replace`, replacing files of the same name and leaving other
    files alone. When the block raises, the temporary directory and everything
    in it is deleted, ``final_dir`` is untouched, and parent directories
    created for it are removed again.

    Example::

        with atomic_directory("out") as tmp:
            (tmp / "a.png").write_bytes(png)
    """
    final = Path(final_dir)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"output path exists and is not a directory: {final}")
    new_parents = [p for p in final.absolute().parents if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = _make_temp_directory(final)
    except BaseException:
        _remove_empty(new_parents)
        raise
    try:
        yield tmp
        _fsync_tree(tmp)
        renamed = False
        if not final.exists():
            try:
                os.rename(tmp, final)
                renamed = True
            except OSError:
                # Lost a race with another process creating final: merge below.
                if not final.is_dir():
                    raise
        if not renamed:
            _merge_into(tmp, final)
            shutil.rmtree(tmp, ignore_errors=True)
            _fsync_directory(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(new_parents)
        raise
    _fsync_directory(final.parent)


def _remove_empty(directories: list[Path]) -> None:
    """Remove directories this module created, innermost first, if still empty."""
    for d in directories:  # Path.parents runs from innermost to outermost
        try:
            os.rmdir(d)
        except OSError:
            return
