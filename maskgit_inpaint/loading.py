"""The model of a run: an exported transformer folder, or a plain .pt with its MaskGit config."""
from __future__ import annotations

import os

import torch

from common import UserError, resolve_path
from models.config import load_maskgit_config
from models.maskgit import MaskGit, default_precision, load_maskgit
from models.pretrained import DEFAULT_CONFIG, maskgit_config


def load_config(path: str | os.PathLike) -> dict:
    """The checked MaskGit config (with its VQGAN config as cfg["vqgan"])."""
    return load_maskgit_config(resolve_path(path))


def model_config(transformer: str | os.PathLike, config: str | os.PathLike | None = None) -> dict:
    """The config of a transformer: an exported folder's own (then `config` must not be given), or
    for a plain .pt the MaskGit YAML `config` (default: DEFAULT_CONFIG, the default model's)."""
    path = resolve_path(transformer)
    if path.is_dir():  # an exported folder; one without config.json is refused by maskgit_config
        if config is not None:
            raise UserError(f"{transformer} is an exported model that carries its config; --MaskGitConfig goes "
                            "with a plain .pt transformer")
        return maskgit_config(path)
    return load_config(config or DEFAULT_CONFIG)


def load_model(config: dict | str | os.PathLike, transformer_ckpt: str | os.PathLike, device: torch.device,
               vqgan: str | os.PathLike | None = None, precision: str | None = None) -> MaskGit:
    """MaskGit in eval mode: an exported transformer folder with its VQGAN (MaskGit.from_pretrained),
    or a plain .pt transformer with `config` (checked config or its file) and the config's VQGAN.
    `vqgan` replaces the VQGAN either names; `precision` is the transformer's (PRECISIONS; default:
    default_precision of the device)."""
    ckpt = resolve_path(transformer_ckpt)
    if not ckpt.exists():
        raise UserError(f"transformer checkpoint not found: {ckpt} (pass --load-transformer-ckpt-path)")
    vqgan = None if vqgan is None else resolve_path(vqgan)
    if ckpt.is_dir():
        return MaskGit.from_pretrained(ckpt, vqgan, device, precision)
    model = load_maskgit(config if isinstance(config, dict) else load_config(config), ckpt, vqgan, device=device)
    return model.set_precision(precision or default_precision(device))
