"""Text output shared by every command: numbers with a dash for missing, HTML/markdown escaping, atomic writes."""

from __future__ import annotations

import html
import math
import os
import secrets
from pathlib import Path
from typing import Any

DASH = "-"        # a missing number in terminal tables, logs and markdown
EM_DASH = "—"     # a missing number in the HTML report


def num(value: Any, spec: str = ".3f", missing: str = DASH) -> str:
    """`value` by a format spec (".3f", ".4g", ".0%", "+.3f"), or `missing` when there is none (None)."""
    return missing if value is None else format(value, spec)


def html_num(value: Any, spec: str = ".3g") -> str:
    """A number in the HTML report (tables, figure labels): an em dash when missing."""
    return num(value, spec, EM_DASH)


def finite(value: Any) -> float | None:
    """A JSON-safe number: None, NaN and the infinities become None (null); anything else becomes a float."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def real(value: Any) -> float | None:
    """`value` as a float where it is a finite int or float (not a bool, a string or NaN), else None: how analysis
    reads a measured field that a hand-edited or older file may hold as anything."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def escape_html(value: Any, quote: bool = True) -> str:
    """Any value as HTML text (None as empty); `quote` also escapes quotes, for attributes."""
    return html.escape("" if value is None else str(value), quote=quote)


def escape_md_cell(value: Any) -> str:
    """A value for one markdown table cell: a '|' would end the cell and a newline the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write through a uniquely named temporary file beside `path` (O_EXCL: two writers never share one), fsync,
    then rename over `path`: a reader sees the old file or the new one, never half of one; nothing is left
    behind on failure. The new file's mode follows the umask, like a plain open()."""
    from bench.errors import UserInputError

    path = Path(path)
    if path.is_dir():
        raise UserInputError("expected a file to write, got a directory", file=str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (where the platform allows opening a directory)."""
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
