"""Opening files without being fooled by what lies in their place: the one door for reading, the one for writing.

Reading (``open_read``, ``read_bytes``): every file prefwatch reads, in every reader, the supervisor, the job
and the monitor, is opened non-blocking and read only when it is a regular file. A named pipe left in the
place of a log would otherwise wait for a writer forever (and a process blocked in ``open`` ignores
SIGTERM and ``q``); a device or a folder is not a log either. Links are followed: a user's logs may be
linked in.

Writing (``open_append``, ``open_lock``, ``write_atomic``, ``make_dir``): nothing is written through a
symbolic link, or into something that is not a plain file with one name. A file prefwatch creates is
created with ``O_EXCL`` (a temporary file renamed into place) or opened with ``O_NOFOLLOW``; a link, a
pipe, a device or a file with a second hard link in its place is refused with one line naming it
(``PlantedFile``). New files and folders get 0666 and 0777 less the user's umask, as ``open`` and
``mkdir`` give them, so a run directory is as readable as its user intends.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

_CREATE_MODE = 0o666  # less the umask (the kernel applies it)
_FOLDER_MODE = 0o777


def what_it_is(mode: int) -> str:
    """A file's kind in a person's words: "a named pipe", "a folder", "a symbolic link"."""
    for test, words in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return words
    return "not a regular file"


class NotRegularFile(OSError):
    """A file to read that is not a regular file; ``strerror`` says what it is ("not a regular file: a named pipe")."""

    def __init__(self, path: Path | str, mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file: {what_it_is(mode)}", str(path))


class PlantedFile(OSError):
    """Something in the place of a file prefwatch writes that it did not create: str() is one line naming it."""

    def __init__(self, path: Path | str, what: str) -> None:
        super().__init__(errno.EPERM, what, str(path))
        self.path, self.what = Path(path), what

    def __str__(self) -> str:
        return f"{self.path}: {self.what} where prefwatch writes a file of its own; nothing was written (remove it to go on)"


# ---- reading ---------------------------------------------------------------------------------------------


def open_read(path: Path | str, follow: bool = True) -> io.BufferedReader:
    """``path`` opened for reading, only if it is a regular file (raises NotRegularFile, an OSError, if not);
    ``follow=False``: not through a symbolic link either (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path | str, limit: int | None = None) -> bytes:
    """The bytes of a regular file (at most ``limit`` + 1 of them, so a caller can tell it was larger)."""
    with open_read(path) as f:
        return f.read() if limit is None else f.read(limit + 1)


def read_text(path: Path | str, errors: str = "strict") -> str:
    return read_bytes(path).decode("utf-8", errors)


# ---- writing ---------------------------------------------------------------------------------------------


def _own(path: Path | str, flags: int) -> int:
    """A file descriptor of a plain file prefwatch may write: never through a link, never a pipe or a device,
    never a file that has another name elsewhere (a hard link planted in its place)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, _CREATE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise PlantedFile(path, "a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a named pipe with no reader, opened for writing
            raise PlantedFile(path, "a named pipe") from None
        if exc.errno == errno.EISDIR:
            raise PlantedFile(path, "a folder") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlantedFile(path, what_it_is(st.st_mode))
        if st.st_nlink > 1:
            raise PlantedFile(path, f"a file with {st.st_nlink - 1} other hard link(s)")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_append(path: Path | str) -> BinaryIO:
    """A log prefwatch appends to (alerts.jsonl, system.jsonl, metrics.jsonl, supervisor.log, stdout.log), created if missing."""
    return os.fdopen(_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


def open_lock(path: Path | str) -> BinaryIO:
    """A lock file (launch.lock, alerts.lock, .status.lock), created if missing, opened to read and write."""
    return os.fdopen(_own(path, os.O_RDWR | os.O_CREAT), "r+b")


def refuse_planted(path: Path | str) -> None:
    """Raise PlantedFile when something other than a plain file with one name lies where prefwatch writes ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise PlantedFile(path, what_it_is(st.st_mode))
    if st.st_nlink > 1:
        raise PlantedFile(path, f"a file with {st.st_nlink - 1} other hard link(s)")


def write_atomic(path: Path | str, data: bytes) -> None:
    """Replace ``path`` whole: a new file (O_EXCL, never through a link) beside it, renamed over it. Readers see
    the old file or the new one. A link or a pipe in its place is refused, not replaced."""
    path = Path(path)
    refuse_planted(path)
    while True:
        temporary = path.parent / f".{path.name}.{os.urandom(4).hex()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _CREATE_MODE)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def make_dir(parent: Path, prefix: str) -> Path:
    """A new folder under ``parent`` with a name no one else has (``prefix`` + a random tail), mode 0777 less
    the umask (where tempfile.mkdtemp makes 0700: a run directory a colleague could not read)."""
    while True:
        folder = parent / f"{prefix}{os.urandom(4).hex()}"
        try:
            os.mkdir(folder, _FOLDER_MODE)
            return folder
        except FileExistsError:
            continue


def listable(folder: Path | str) -> bool:
    """Whether this user can list ``folder`` (another user's private folder: no). Path.is_file() on a path
    inside one raises PermissionError; a search checks this first and says the folder was not read."""
    try:
        os.scandir(folder).close()
    except OSError:
        return False
    return True


def disk_full(path: Path | str, room: int) -> bool:
    """Whether the file system holding ``path`` has less than ``room`` bytes left for this user."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < room
