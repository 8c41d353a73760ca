"""Stage 2: train MaskGit's bidirectional transformer on a frozen VQGAN's tokens (training.transformer; --help)."""
from common import run_cli
from training.transformer import main

if __name__ == "__main__":
    run_cli(main)
