"""What every script's command line shares: the runner that turns a UserError into one line and
exit code 2, the lab's flag spellings and an argparse whose usage errors are UserErrors (the checks
of values and paths are in common.checks)."""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

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
