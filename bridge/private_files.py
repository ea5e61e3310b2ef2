"""Files and directories only their owner may read: the bridge's stores hold customers' personal data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def make_private_directories(directory: Path) -> None:
    """Create `directory` and any missing parents, each owner-only; existing ones are the operator's."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:  # made meanwhile by someone else: theirs
            continue
        os.chmod(level, DIRECTORY_MODE)  # mkdir's mode passes through the umask


def make_private_file(path: Path) -> None:
    """Create `path` owner-only if missing (empty), and take group and world access from it if it exists."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE))
    os.chmod(path, FILE_MODE)  # the umask may have taken bits from a new file; an old one may be 0644


def restrict_file(path: Path) -> None:
    """Take group and world access from `path` if it exists."""
    try:
        os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass


def replace_privately(path: Path, text: str) -> None:
    """Durably make `text` the content of `path`, owner-only: write a new file, fsync, rename, fsync the folder.

    A crash leaves the old content or the new, never a mix; missing folders are created owner-only. OSError
    for the caller to name the setting that chose the place.
    """
    make_private_directories(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:  # mkstemp makes it 0600: only the bridge's user reads it
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
