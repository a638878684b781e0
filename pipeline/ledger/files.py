"""The service's own files, readable by the service alone (ARCHITECTURE rule 5).

The embedded ledger (the SQLite file, and its -wal, -shm and -journal files), the storage
key and the logs hold what the service protects: the ledger holds results (encrypted) and
the directory, the key opens them. `var/` is created 0700 and these files 0600, from the
start (the SQLite file is created empty 0600 before SQLite opens it, so the journal files
SQLite makes beside it get the same mode). One found more open than that (made by an older
version, or copied in with a lax umask) is made private when a process starts, with a
warning naming the path; one that cannot be (another user owns it) is warned about too.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
#: What SQLite may keep beside a database file.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
#: Folders under `var/` where the service keeps files of its own too (the broker's log).
PRIVATE_SUBFOLDERS = ("broker",)
#: The files made private at start: the SQLite ledger and its journals, keys, logs.
PRIVATE_FILES = ("*.db", "*.db-wal", "*.db-shm", "*.db-journal", "*.key", "*.log")


def private_directory(path: Path) -> Path:
    """Create `path` (0700) if needed, or make an existing one private."""
    path.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    make_private(path)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty (0600) if it does not exist, without a moment when it is
    readable by others; an existing one is made private."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        make_private(path)
    else:
        os.close(descriptor)
    return path


def make_private(path: Path) -> None:
    """Take group and other permissions off `path` (a directory keeps 0700, a file gets
    0600), saying so; a missing path, a symbolic link or a socket is left alone."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(status.st_mode):
        wanted = PRIVATE_DIRECTORY
    elif stat.S_ISREG(status.st_mode):
        wanted = PRIVATE_FILE
    else:
        return
    mode = stat.S_IMODE(status.st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, wanted)
    except OSError as error:
        logger.warning(
            "%s is readable by other users (mode %04o) and cannot be made private (%s): "
            "restrict it by hand (chmod %o)",
            path,
            mode,
            error.strerror or type(error).__name__,
            wanted,
        )
        return
    logger.warning(
        "%s was readable by other users (mode %04o): made %04o (it may hold health data or "
        "the key to it)",
        path,
        mode,
        wanted,
    )


def secure_var_dir(var_dir: Path) -> Path:
    """Create `var/` private, or make it and the service's own files in it private: the
    ledger and its journals, key files and logs (`PRIVATE_FILES`), in `var/` and in the
    embedded broker's folder. Other files (the beat schedule, the broker's pid and data)
    hold no health data and are left as their programs make them: `var/` being 0700
    already keeps other users out of all of it."""
    private_directory(var_dir)
    for folder in (var_dir, *(var_dir / name for name in PRIVATE_SUBFOLDERS)):
        for pattern in PRIVATE_FILES:
            for path in sorted(folder.glob(pattern)):
                make_private(path)
    return var_dir


def private_sqlite_file(database: Path, var_dir: Path) -> None:
    """Before SQLite opens `database`: its folder exists (private when it is `var/`), the
    file exists 0600 (SQLite gives its journals the database's mode), and journal files
    already there are private."""
    folder = database.parent
    if os.path.abspath(folder) == os.path.abspath(var_dir):
        secure_var_dir(var_dir)
    else:
        folder.mkdir(parents=True, exist_ok=True)
    private_file(database)
    for suffix in SQLITE_SIDE_FILES:
        make_private(database.with_name(database.name + suffix))
