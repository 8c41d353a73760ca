"""What every script's command line shares: the runner that turns a UserError into one line and
exit code 2, an argparse whose usage errors are UserErrors, and the checks of flags and output folders."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import UserError


def _one_line_warning(message: Warning | str, *args: object, **kwargs: object) -> str:
    return f"warning: {message}\n"


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(): a UserError becomes one line on stderr and exit code 2, no traceback;
    warnings are one line each ("warning: ...")."""
    warnings.formatwarning = _one_line_warning
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)



# The lab's spellings of this repository's flags, the one table of them: every CLI that has one of
# these flags takes both (spelled(flag) gives the pair to argparse).
LAB_SPELLINGS = {
    "--config": "--MaskGitConfig",
    "--train-path": "--train_d_path",
    "--val-path": "--val_d_path",
    "--run-dir": "--checkpoint-path",
    "--save-every": "--ckpt-interval",
    "--num-workers": "--num_workers",
    "--vqgan": "--vqgan-ckpt",
    "--gt-path": "--gtcsv-path",
}


def spelled(flag: str) -> tuple[str, ...]:
    """`flag` and, when the lab spells it otherwise, the lab's spelling (LAB_SPELLINGS)."""
    return (flag, LAB_SPELLINGS[flag]) if flag in LAB_SPELLINGS else (flag,)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line and exit code 2, like every bad input."""

    def error(self, message: str):
        raise UserError(message)


def check_minimum(args: object, minimum: int, *flags: str) -> None:
    """Each of `flags` ("--batch-size", "--num_workers": the attribute of `args` is the name without
    dashes), when given, must be at least `minimum`."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be at least {minimum}, got {value}")


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
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: {existing} is not writable")
    for source in inputs:
        if source is None:
            continue
        resolved = Path(source).resolve()
        for name in writes:
            if _overlap((out / name).resolve(), resolved):
                raise UserError(f"{flag} {out} overlaps the input {source} (this run writes "
                                f"{out / name if name != '.' else out}); choose another {flag}")
    return out
