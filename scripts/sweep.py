"""Sweep MaskGIT's decoding settings on one test set, with FID when it can (maskgit_inpaint.sweep; --help)."""
from common import run_cli
from maskgit_inpaint.sweep import main

if __name__ == "__main__":
    run_cli(main)
