"""Reading and checking the YAML configs. A bad value fails here, at load, with the key and file."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from common import UserError, resolve_path
from models.transformer import ATTENTION_KINDS

VQGAN_REQUIRED = ("image_channels", "enc_channels", "dec_channels", "latent_dim", "img_resolution",
                  "latent_resolution", "num_codebook_vectors")
# A VQGAN config without mean/std is most likely the lab's own VQGAN.yml, which goes with its
# VQGAN.pt: default to the normalization that checkpoint was trained with.
VQGAN_DEFAULTS = {"beta": 0.25, "enc_res_blocks": 2, "dec_res_blocks": 3,
                  "mean": [0.4816, 0.4324, 0.3845], "std": [0.2602, 0.2518, 0.2537]}
TRANSFORMER_REQUIRED = ("num_image_tokens", "num_codebook_vectors", "dim", "n_layers", "hidden_dim")
TRANSFORMER_DEFAULTS = {"num_heads": 16, "dropout": 0.1, "attention": "manual"}
MASKGIT_DEFAULTS = {"choice_temperature": 4.5, "gamma_type": "cosine", "label_smoothing": 0.0}


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_param"), dict):
        raise UserError(f"{path}: missing the top-level `model_param` section")
    return data


def _require(section: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if key not in section:
            raise UserError(f"{where}: missing key `{key}`")


def load_vqgan_config(path: str | os.PathLike) -> dict:
    """`model_param` of a VQGAN config, with defaults filled in and values checked."""
    cfg = {**VQGAN_DEFAULTS, **read_yaml(path)["model_param"]}
    where = f"{path} (model_param)"
    _require(cfg, VQGAN_REQUIRED, where)
    ratio = cfg["img_resolution"] / cfg["latent_resolution"]
    if ratio < 1 or ratio != int(ratio) or int(ratio) & (int(ratio) - 1):
        raise UserError(f"{where}: img_resolution / latent_resolution must be a power of two, "
                        f"got {cfg['img_resolution']} / {cfg['latent_resolution']}")
    resamplings = int(ratio).bit_length() - 1
    if len(cfg["enc_channels"]) - 1 < resamplings:
        raise UserError(f"{where}: `enc_channels` needs at least {resamplings + 1} entries for "
                        f"{resamplings} downsamplings")
    if len(cfg["dec_channels"]) < resamplings:
        raise UserError(f"{where}: `dec_channels` needs at least {resamplings} entries for {resamplings} upsamplings")
    for key in ("mean", "std"):
        if len(cfg[key]) != cfg["image_channels"]:
            raise UserError(f"{where}: `{key}` needs {cfg['image_channels']} values, got {cfg[key]}")
    if min(cfg["std"]) <= 0:
        raise UserError(f"{where}: `std` values must be positive")
    return cfg


def load_maskgit_config(path: str | os.PathLike) -> dict:
    """`model_param` of a MaskGit config (the lab's structure), checked against its VQGAN config.
    Adds `vqgan` (the checked VQGAN model_param) and resolves the VQGAN paths."""
    from models.maskgit import GAMMA_FUNCTIONS

    path = Path(path)
    cfg = {**MASKGIT_DEFAULTS, **read_yaml(path)["model_param"]}
    where = f"{path} (model_param)"
    _require(cfg, ("VQ_Configs", "num_image_tokens", "num_codebook_vectors", "Transformer_param"), where)
    _require(cfg["VQ_Configs"], ("VQ_config_path",), f"{where} VQ_Configs")
    tcfg = {**TRANSFORMER_DEFAULTS, **cfg["Transformer_param"]}
    twhere = f"{where} Transformer_param"
    _require(tcfg, TRANSFORMER_REQUIRED, twhere)
    cfg["Transformer_param"] = tcfg
    if cfg["gamma_type"] not in GAMMA_FUNCTIONS:
        raise UserError(f"{where}: unknown `gamma_type` {cfg['gamma_type']!r}; valid: {', '.join(GAMMA_FUNCTIONS)}")
    if tcfg["dim"] % tcfg["num_heads"]:
        raise UserError(f"{twhere}: `dim` {tcfg['dim']} is not divisible by `num_heads` {tcfg['num_heads']}")
    if tcfg["attention"] not in ATTENTION_KINDS:
        raise UserError(f"{twhere}: `attention` must be one of {ATTENTION_KINDS}, got {tcfg['attention']!r}")
    for key in ("num_image_tokens", "num_codebook_vectors"):
        if tcfg[key] != cfg[key]:
            raise UserError(f"{where}: `{key}` is {cfg[key]} but Transformer_param has {tcfg[key]}")

    vq_paths = cfg["VQ_Configs"]
    vq_config_path = resolve_path(vq_paths["VQ_config_path"], path.parent)
    vq = load_vqgan_config(vq_config_path)
    if vq["num_codebook_vectors"] != cfg["num_codebook_vectors"]:
        raise UserError(f"{where}: `num_codebook_vectors` is {cfg['num_codebook_vectors']} but the VQGAN config "
                        f"{vq_config_path} has {vq['num_codebook_vectors']}")
    if vq["latent_resolution"] ** 2 != cfg["num_image_tokens"]:
        raise UserError(f"{where}: `num_image_tokens` is {cfg['num_image_tokens']} but the VQGAN config "
                        f"{vq_config_path} gives {vq['latent_resolution']}x{vq['latent_resolution']} tokens")
    cfg["vqgan"] = vq
    cfg["VQ_Configs"] = {**vq_paths, "VQ_config_path": str(vq_config_path)}
    if vq_paths.get("VQ_CKPT_path"):
        cfg["VQ_Configs"]["VQ_CKPT_path"] = str(resolve_path(vq_paths["VQ_CKPT_path"], path.parent))
    return cfg
