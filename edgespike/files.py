"""Writing files so that nobody ever sees half of one, and refusing outputs that cannot be written before any work.

An output that cannot be written (a folder in its place, a missing or read-only folder, a full disk) is reported
as :class:`OutputError`: one line naming the path and what to do, which the CLI prints with exit status 2.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from edgespike.errors import UserError


class OutputError(UserError, OSError):
    """An output that cannot be written: a :class:`UserError` for the CLI, an ``OSError`` for library users."""


def _reason(exc: OSError, folder: Path) -> str:
    """What an ``OSError`` from creating a file in ``folder`` means to a user, and what to do about it."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"folder {folder} is read-only; choose a writable folder"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the disk of {folder}; free some space or choose another folder"
    if exc.errno == errno.ENOTDIR:
        return f"{folder} is not a folder; choose a path in an existing folder"
    if exc.errno == errno.ENOENT and not folder.is_dir():
        return f"folder {folder} does not exist; create it or choose another"
    if exc.errno == errno.ENOENT:  # /proc and other virtual file systems: a folder that takes no new files
        return f"folder {folder} does not take new files; choose a writable folder"
    return f"{exc.strerror or exc}; choose another path"


def check_output(path: str | os.PathLike, folder_ok: bool = False) -> Path:
    """Refuse, before any work is done, an output ``path`` that cannot be written.

    Parameters
    ----------
    path
        The file to be written (or, with ``folder_ok``, a folder to write files into).
    folder_ok
        ``path`` may be an existing folder (an image sequence); it is then the folder that must be writable.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    OutputError
        ``path`` is a folder, or its folder is missing, not a folder, or not writable. Writability is probed by
        creating and removing a temporary file, because ``os.access`` says yes to root on a read-only mount.
    """
    path = Path(path)
    if path.is_dir() and not folder_ok:
        example = path / f"out{path.suffix or '.png'}"
        raise OutputError(f"cannot write {path}: it is a folder; name a file, e.g. {example}")
    folder = path if path.is_dir() else path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        # a parent that is a regular file reports ENOTDIR or ENOENT depending on the platform: name it exactly
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"cannot write {path}: {folder} is a file, not a folder; choose a path in an "
                              "existing folder") from None
        raise OutputError(f"cannot write {path}: {_reason(exc, folder)}") from None
    os.close(fd)
    os.unlink(tmp)
    return path


def replace(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """``os.replace(tmp, path)``; on failure ``tmp`` is removed and :class:`OutputError` names ``path``."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if Path(path).is_dir():
            raise OutputError(f"cannot write {path}: it is a folder; name a file") from None
        raise OutputError(f"cannot write {path}: {_reason(exc, Path(path).parent)}") from None


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    Readers see the old file or the complete new one, never a partial write; an error or Ctrl-C part-way leaves
    no temporary file behind. A path that cannot be written raises :class:`OutputError`.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError:
        check_output(path)  # raises the OutputError that names the problem
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {_reason(exc, path.parent)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    replace(tmp, path)
