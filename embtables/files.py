"""Files written atomically: to a temporary name in the same folder, fsynced, then renamed, so a crash never leaves
a half-written file under a final name. Every file the project writes goes through `atomic_write`, and gets the
mode `open()` would give it (0666 less the umask), not the 0600 of the temporary file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status), else by setting
    and restoring it under a lock (to 0o077 meanwhile, so a file another thread creates then is not more open)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` then rename tmp_path to `path` atomically (same folder, fsynced), with the mode
    `open()` would have given `path` (mkstemp creates the temporary file 0600: readable by its owner only).

    Args:
        path: the final name.
        write: writes the content to the path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def as_json(value: Any) -> Any:
    """`value` as it reads back from a JSON file (tuples as lists, ...), to compare it with what a file holds."""
    return json.loads(json.dumps(value))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in `path`; ValueError naming the file when it is not valid JSON (e.g. truncated)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB pieces, so any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def link_or_copy(source: str | os.PathLike, path: str | os.PathLike) -> str:
    """Put `source`'s bytes at `path` atomically: a hard link where the file system allows (no copy, no space:
    the writers here replace files by renaming, so the link keeps the bytes it was made with), else a copy.

    Args:
        source: an existing file.
        path: the name to give it (replaced if it exists).

    Returns:
        `"link"` or `"copy"`: what was done.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.link"
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
        return "link"
    except OSError:
        tmp.unlink(missing_ok=True)
    atomic_write(path, lambda t: shutil.copyfile(source, t))
    return "copy"
