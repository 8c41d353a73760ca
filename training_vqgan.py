"""Stage 1: train the VQGAN, evaluate its tokens, or refit its codebook (training.vqgan; --help)."""
from common import run_cli
from training.vqgan import main

if __name__ == "__main__":
    run_cli(main)
