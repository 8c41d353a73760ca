"""Where the files a config or a flag names are found."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> Path:
    """Find a file named in a config: as given (from the working directory), then beside the
    config that names it, then from the repository root."""
    path = Path(path)
    candidates = [path]
    if not path.is_absolute():
        if relative_to is not None:
            candidates.append(Path(relative_to) / path)
        candidates.append(REPO_ROOT / path)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return path
