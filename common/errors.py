"""The one exception of bad input: every CLI prints it as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (missing file, wrong shape, bad flag). CLIs print it and exit 2."""
