"""Files and directories only their owner may read: the bridge's stores hold customers' personal data."""

from __future__ import annotations

import os
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
