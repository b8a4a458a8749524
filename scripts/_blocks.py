"""Generated sections of markdown files: the text between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` is replaced by a script's output (atomically); nothing else is touched."""

from __future__ import annotations

import re
from pathlib import Path

from medshift_fast.fileio import atomic_write_text


def fill_block(path: Path, name: str, body: str, required: bool = False) -> bool:
    """Replace the NAME block of ``path`` with ``body``; False (or SystemExit if ``required``)
    when the file or its markers are missing."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    pat = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pat.search(text):
        if required:
            raise SystemExit(f"{path} has no {name} markers")
        return False
    atomic_write_text(path, pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n"
                                    + m.group(2), text))
    return True
