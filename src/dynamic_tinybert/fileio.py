"""Reading and writing users' files: atomic writes (a reader, or a crash, never sees a half-written file), and
text that names where it is not UTF-8."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def decode_utf8(data: bytes, source: str) -> str:
    """`data` as text; a ValueError that names `source` and the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None


def atomic_write(target: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Let `write(tmp_path)` fill a temporary file beside `target`, flush it to disk, then rename it over `target`."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else _new_file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_report(output: str | os.PathLike, table: str, data: object) -> list[Path]:
    """OUTPUT.md (the table, for people) and OUTPUT.json (the numbers, for programs), each atomically."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = [output.with_name(output.name + suffix) for suffix in (".md", ".json")]
    atomic_write_text(paths[0], table)
    atomic_write_text(paths[1], json.dumps(data, indent=1) + "\n")
    return paths


def _new_file_mode() -> int:
    """The mode `open()` would give a new file (0o666 less the umask); mkstemp's own is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
