"""Convert plain torch weights (a VQGAN.pt, a transformer .pt) into exported model folders (models.convert; --help)."""
from common import run_cli
from models.convert import main

if __name__ == "__main__":
    run_cli(main)
