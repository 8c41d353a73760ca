"""The checks every entry point shares, before anything is read or written: numbers (flags and API
options alike), paths to read and folders to write (permission-aware, so a locked folder is one line,
not a PermissionError), and the destinations a run replaces (exports, figures, statistics, masks)."""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import UserError

SEED_MAX = 2**63 - 1  # seeds are 0..SEED_MAX: what every generator here (and torch) takes


def check_number(value: object, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False, integer: bool = False) -> int | float:
    """`value` as a finite real number (an int when `integer`; a bool or a string is neither) in
    [minimum, maximum], and > 0 when `positive`; else a UserError naming `name` (a flag or an option)."""
    valid_type = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, valid_type):
        raise UserError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise UserError(f"{name} must be > 0, got {value!r}")
    low, high = minimum is not None and value < minimum, maximum is not None and value > maximum
    if (low or high) and minimum is not None and maximum is not None:
        raise UserError(f"{name} must be between {minimum:g} and {maximum:g}, got {value!r}")
    if low:
        raise UserError(f"{name} must be at least {minimum:g}, got {value!r}")
    if high:
        raise UserError(f"{name} must be at most {maximum:g}, got {value!r}")
    return int(value) if integer else float(value)


def check_seed(value: object, name: str) -> int:
    """A seed: an integer in 0..SEED_MAX."""
    return int(check_number(value, name, minimum=0, maximum=SEED_MAX, integer=True))


def check_minimum(args: object, minimum: int, *flags: str) -> None:
    """Each of `flags` ("--batch-size", "--num_workers": the attribute of `args` is the name without
    dashes), when given, must be an integer of at least `minimum`."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            check_number(value, flag, minimum=minimum, integer=True)


def check_readable(path: str | os.PathLike, flag: str, folder: bool | None = None) -> Path:
    """`path` exists, is a folder (`folder` True) or a file (False), and can be read (a folder:
    listed); else one UserError that names `flag` and says which of these it is not."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path} not found")
    if folder is True and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    if folder is False and path.is_dir():
        raise UserError(f"{flag} {path} is a folder, not a file")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise UserError(f"{flag} {path} is not readable (permission denied)")
    return path


def check_writable(path: str | os.PathLike, flag: str) -> Path:
    """`path` (a file or folder to write, existing or not) can be written: its nearest existing
    folder is a folder this user can write into, and an existing file there is writable."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK) or (existing.is_file() and not os.access(existing, os.W_OK)):
        raise UserError(f"{flag} {path}: {folder if folder == existing else existing} is not writable")
    return path


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_output_dir(out: str | os.PathLike, flag: str, writes: Sequence[str] = (),
                     inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Check, before anything is read or written, that `out` can be the folder where a run writes
    (or replaces) the entries `writes` (names inside it; "." for the whole folder): it is not a file,
    it or its nearest existing parent is writable, and no input file or folder in `inputs` (None
    skipped) is one of those entries, inside one or holds one. Does not create the folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a folder")
    check_writable(out, flag)
    for source in inputs:
        if source is None:
            continue
        resolved = Path(source).resolve()
        for name in writes:
            if _overlap((out / name).resolve(), resolved):
                raise UserError(f"{flag} {out} overlaps the input {source} (this run writes "
                                f"{out / name if name != '.' else out}); choose another {flag}")
    return out


# an existing destination -> None when this run may replace it, else why not (for the message)
Replaceable = Callable[[Path], "str | None"]


def check_destination(dest: str | os.PathLike, flag: str, *, inputs: Sequence[str | os.PathLike | None] = (),
                      replaceable: Replaceable | None = None, overwrite: bool = False) -> Path:
    """The one check of every writer that replaces a file or folder `dest` (a model export, a figure,
    statistics, a mask), before anything is written: it can be written (check_writable); it is no
    input of the run (`inputs`, None skipped: `dest` is one or holds one), whatever `overwrite` says;
    and when it exists, `replaceable(dest)` allows it (the same kind of output of the same run,
    replaced as documented) or `overwrite` (the user's --overwrite) does. Returns `dest`."""
    dest = Path(dest)
    check_writable(dest, flag)
    resolved = dest.resolve()
    for source in inputs:
        if source is not None and Path(source).resolve().is_relative_to(resolved):  # dest is the input or holds it
            raise UserError(f"{flag} {dest} would replace {source}, an input of this run; choose another {flag}")
    if dest.exists() and not overwrite:
        reason = "was not written by this run" if replaceable is None else replaceable(dest)
        if reason is not None:
            raise UserError(f"{flag} {dest} already exists and {reason}; choose another {flag}, or pass "
                            "--overwrite to replace it")
    return dest
