"""Convert plain torch weights (a VQGAN.pt, a transformer .pt) into exported model folders
(models/pretrained.py), the format inpainting.py, MaskGit.from_pretrained and app.py load.

    python scripts/convert_weights.py vqgan OLD/vqgan_small.pt --config configs/small/VQGAN.yml \
        --out checkpoints/vqgan_small --credits datasets/twemoji/CREDITS.md
    python scripts/convert_weights.py maskgit OLD/transformer_small.pt --config configs/small/MaskGit.yml \
        --vqgan checkpoints/vqgan_small --out checkpoints/transformer_small --credits datasets/twemoji/CREDITS.md

A plain .pt records neither its config nor its VQGAN: --config and --vqgan say them, and are taken
on trust. The folder records the source file's SHA-256 (`converted_from`), so a training run made
on that file still matches the converted VQGAN (training_transformer.py --export, --resume). For a
run folder use the training scripts' --export instead, which reads the run's own records.
"""
from __future__ import annotations

import os
from pathlib import Path

from common import ArgumentParser, UserError, check_readable, load_checkpoint, load_weights
from models import VQGAN, BidirectionalTransformer
from models.config import load_maskgit_config, load_vqgan_config
from models.pretrained import (
    check_export_destination,
    check_trained_on,
    export_origin,
    read_vqgan_weights,
    weights_digest,
    write_exported,
)


def convert(kind: str, weights: str | os.PathLike, config: str | os.PathLike, out: str | os.PathLike,
            vqgan: str | os.PathLike | None = None, credits: str | os.PathLike | None = None,
            overwrite: bool = False) -> str:
    """Write the exported folder `out` for the `kind` ("vqgan" or "maskgit") weights file `weights`
    built with `config`; a transformer names `vqgan` (default: its config's VQ_CKPT_path), which
    must be the VQGAN file a training checkpoint records. `out` may replace only an earlier
    conversion of the same file (else `overwrite`), never an input. Returns the folder's weights digest."""
    weights = check_readable(weights, "weights", folder=False)
    origin = export_origin(weights, file=True)
    vqgan = vqgan or (load_maskgit_config(config)["VQ_Configs"]["VQ_CKPT_path"] if kind == "maskgit" else None)
    check_export_destination(out, "--out", kind, origin, [weights, config, vqgan, credits], overwrite)
    facts: dict = {"converted_from": [{"file": weights.name, "sha256": origin.removeprefix("file:")}]}
    if credits is not None:
        if not Path(credits).is_file():
            raise UserError(f"credits file not found: {credits}")
        facts["data"] = {"credits": Path(credits).read_text()}
    if kind == "vqgan":
        cfg = load_vqgan_config(config)
        module = VQGAN(cfg)
        load_weights(module, weights, key="vqgan")
    else:
        cfg = load_maskgit_config(config)
        if not vqgan or not Path(vqgan).exists():
            raise UserError(f"VQGAN weights not found: {vqgan} (pass --vqgan)")
        if weights.suffix != ".safetensors":
            checkpoint = load_checkpoint(weights)
            if "vqgan_digest" in checkpoint:  # a training checkpoint says which VQGAN file it was trained on
                check_trained_on(checkpoint, weights, vqgan, "--vqgan")
        module = BidirectionalTransformer(cfg["Transformer_param"])
        load_weights(module, weights, key="model")
        facts["vqgan"] = {"digest": weights_digest(read_vqgan_weights(vqgan)),
                          "path": os.path.relpath(Path(vqgan).resolve(), Path(out).resolve())}
        cfg = {k: v for k, v in cfg.items() if k != "VQ_Configs"}
    return write_exported(out, kind, module, cfg, origin, **facts)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("vqgan", "maskgit"), help="what the weights are")
    p.add_argument("weights", help="the torch file (plain state_dict or training checkpoint)")
    p.add_argument("--config", required=True, help="the YAML config the weights were trained with")
    p.add_argument("--out", required=True, help="the exported folder to write")
    p.add_argument("--vqgan", help="maskgit: the VQGAN it was trained on (default: the config's VQ_CKPT_path)")
    p.add_argument("--credits", help="the training data's CREDITS.md, recorded in the folder")
    p.add_argument("--overwrite", action="store_true", help="replace another model folder at --out")
    args = p.parse_args(argv)
    digest = convert(args.kind, args.weights, args.config, args.out, args.vqgan, args.credits, args.overwrite)
    print(f"wrote {args.out} ({digest[:19]}...)")

