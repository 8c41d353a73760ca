"""The same test images as filled by several inpainting runs, side by side (maskgit_inpaint.compare_runs; --help)."""
from common import run_cli
from maskgit_inpaint.compare_runs import main

if __name__ == "__main__":
    run_cli(main)
