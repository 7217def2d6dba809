"""Finding recordings: recursive, deterministic, fast on folders of 10,000+ files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fieldmon.audio import AUDIO_EXTENSIONS


@dataclass(frozen=True)
class Recording:
    path: Path
    relative: str  # to the scanned root, with '/' separators: the key in the outputs
    size: int
    mtime_ns: int


def discover(root: str | os.PathLike) -> tuple[list[Recording], list[tuple[str, str]]]:
    """Audio files under ``root`` (or ``root`` itself when it is a file), sorted by
    relative path, and the entries that could not be examined, with the reason.

    Hidden files and folders are skipped. Symlinked folders are not followed, which
    also makes symlink loops harmless; symlinked files are scanned.
    """
    root = Path(root)
    if root.is_file():
        st = root.stat()
        return [Recording(root, root.name, st.st_size, st.st_mtime_ns)], []
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    found: list[Recording] = []
    problems: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            problems.append((_relative(Path(folder), root), f"cannot list folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS:
                    st = entry.stat()  # follows a symlinked file
                    found.append(Recording(Path(entry.path), _relative(Path(entry.path), root), st.st_size, st.st_mtime_ns))
            except OSError as exc:
                problems.append((_relative(Path(entry.path), root), exc.strerror or str(exc)))
    found.sort(key=lambda r: r.relative)
    return found, sorted(problems)


def _relative(path: Path, root: Path) -> str:
    # Names that are not valid UTF-8 (old cards, other locales) still need a text key.
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")
