"""Writing a file so that no reader, and no crash, ever sees half of it.

The text goes to a temporary file beside the target, is flushed to the disk (fsync), and is renamed
over the target (os.replace, atomic on POSIX); the folder is then synced too, so that after a power
loss or a machine restart the file is the old one or the new one, never an empty or torn one.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path


def write_text_atomic(path: Path, text: str, tmp_suffix: str = "tmp") -> None:
    """Replaces ``path`` with ``text`` atomically and durably. Raises OSError; the temporary file is
    removed on failure. ``tmp_suffix`` keeps two writers of the same file (the runner and its
    watchdog) off each other's temporary file."""
    tmp = path.with_name(f".{path.name}.{tmp_suffix}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        with suppress(OSError):
            tmp.unlink()
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Makes the rename durable; a file system that cannot sync a folder is left as it is."""
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
