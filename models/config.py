"""Reading and checking the YAML configs: the one owner of every default.

Each section (the VQGAN's and MaskGit's `model_param`, `Transformer_param`, `VQ_Configs`, both
scripts' `train_param`) is a table of keys, each with a type check and a default (or none: the key
is required). A file is parsed once; a bad value, a missing key or an unknown (misspelt) key fails
at load with the key and the file named. Constructors read the checked dicts by key: a new setting
is one line in a table here. Numbers are accepted in any YAML spelling (PyYAML reads an unquoted
`3e-4` as a string).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common import UserError, resolve_path
from data.datasets import COLOUR_ORDERS
from models.schedules import GAMMA_FUNCTIONS
from models.transformer import ATTENTION_KINDS

REQUIRED = object()  # a Key's default when the key must be in the file


class Invalid(ValueError):
    """A value that fails its key's check; the message names the key, the caller adds the file."""


Check = Callable[[str, Any], Any]  # (key, raw value) -> checked value, or raises Invalid


@dataclass(frozen=True)
class Key:
    """One config key: its check (or, for a nested section, that section's table) and its default."""
    check: Check | dict[str, Key]
    default: Any = REQUIRED


def _fail(key: str, expected: str, value: Any) -> Invalid:
    return Invalid(f"`{key}` must be {expected}, got {value!r}")


def _as_number(value: Any) -> float | int | None:
    """An int or float from any YAML spelling (1, 1.0, 3e-4, "3e-4"); None when not a finite number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def integer(minimum: int = 1, maximum: int | None = None) -> Check:
    """An integer in [minimum, maximum]; integral spellings such as 1e4 are accepted, 2.5 or "x" are not."""
    expected = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

    def check(key: str, value: Any) -> int:
        number = _as_number(value)
        if number is None or number != int(number) or number < minimum or (maximum is not None and number > maximum):
            raise _fail(key, expected, value)
        return int(number)
    return check


def number(minimum: float = 0.0, below: float | None = None, positive: bool = False) -> Check:
    """A float in [minimum, below) (or > minimum when `positive`)."""
    expected = f"a number {'>' if positive else '>='} {minimum:g}" + (f" and < {below:g}" if below is not None else "")

    def check(key: str, value: Any) -> float:
        n = _as_number(value)
        if n is None or n < minimum or (positive and n == minimum) or (below is not None and n >= below):
            raise _fail(key, expected, value)
        return float(n)
    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)
    return value


def choice(options: Any) -> Check:
    """One of the names in `options` (a tuple, or a registry dict that may grow at run time)."""
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise Invalid(f"unknown `{key}` {value!r}; valid: {', '.join(options)}")
        return value
    return check


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(key, "a non-empty string", value)
    return value


def optional_text(key: str, value: Any) -> str | None:
    return None if value is None else text(key, value)


def int_list(key: str, value: Any) -> list[int]:
    """A non-empty list of positive integers (channel counts)."""
    if not isinstance(value, list) or not value:
        raise _fail(key, "a list of positive integers", value)
    return [integer(1)(f"{key}[{i}]", v) for i, v in enumerate(value)]


def float_list(positive: bool = False) -> Check:
    """A non-empty list of numbers (positive ones when `positive`)."""
    item = number(0.0, positive=True) if positive else _any_float

    def check(key: str, value: Any) -> list[float]:
        if not isinstance(value, list) or not value:
            raise _fail(key, "a list of numbers", value)
        return [item(f"{key}[{i}]", v) for i, v in enumerate(value)]
    return check


def _any_float(key: str, value: Any) -> float:
    n = _as_number(value)
    if n is None:
        raise _fail(key, "a number", value)
    return float(n)


def optional(check: Check) -> Check:
    """None, or a value that passes `check`."""
    return lambda key, value: None if value is None else check(key, value)


def betas(key: str, value: Any) -> list[float]:
    """Adam's (beta1, beta2): two numbers in [0, 1)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(key, "two numbers in [0, 1), e.g. [0.9, 0.99]", value)
    return [number(0.0, below=1.0)(f"{key}[{i}]", v) for i, v in enumerate(value)]


# ----------------------------------------------------------------------------- the tables

TOP_LEVEL = ("model_param", "train_param")

VQGAN_PARAM = {
    "image_channels": Key(integer()),
    "enc_channels": Key(int_list),
    "dec_channels": Key(int_list),
    "latent_dim": Key(integer()),
    "img_resolution": Key(integer()),
    "latent_resolution": Key(integer()),
    "num_codebook_vectors": Key(integer()),
    "beta": Key(number(), 0.25),                     # commitment loss weight
    # global: the lab's encoder (attention and GroupNorm see the whole image); local: each code sees
    # only its patch and 2 pixels around it (models.vqgan.LocalEncoder), so a hole leaves the codes
    # of tokens two or more away from it unchanged
    "encoder": Key(choice(("global", "local")), "global"),
    # the decoder also sees the known pixels and the hole (models.vqgan.KnownPixels; PUT, Liu et al.
    # 2022), fitted onto a trained VQGAN by training_vqgan.py --fit-known-pixels; the codes do not change
    "known_pixels": Key(boolean, False),
    # codes compared and looked up as unit vectors (cosine similarity), as ViT-VQGAN's l2-normalized
    # codes (Yu et al. 2022); with a small latent_dim, its low-dimensional lookup too
    "l2_codes": Key(boolean, False),
    "enc_res_blocks": Key(integer(), 2),             # residual blocks per channel stage (the lab's values)
    "dec_res_blocks": Key(integer(), 3),
    # A VQGAN config without mean/std is most likely the lab's own VQGAN.yml, which goes with its
    # VQGAN.pt: default to the normalization that checkpoint was trained with.
    "mean": Key(float_list(), [0.4816, 0.4324, 0.3845]),
    "std": Key(float_list(positive=True), [0.2602, 0.2518, 0.2537]),
}

VQGAN_TRAIN = {
    "epochs": Key(integer(), 100),
    "batch_size": Key(integer(), 32),
    "learning_rate": Key(number(positive=True), 2e-4),
    "betas": Key(betas, [0.5, 0.9]),
    "warmup_steps": Key(integer(0), 200),
    "l2_weight": Key(number(), 0.0),                 # reconstruction = L1 + l2_weight * L2
    "disc_start": Key(integer(0), 10000),            # step at which the PatchGAN loss switches on
    "disc_weight": Key(number(), 0.1),               # times the adaptive weight ||grad rec|| / ||grad gan||
    "disc_loss": Key(choice(("hinge", "vanilla")), "hinge"),  # vanilla = non-saturating
    "perceptual_weight": Key(number(), 0.0),         # > 0 needs perceptual_weights: a local VGG16 file
    "perceptual_weights": Key(optional_text, None),
    "reinit_dead_codes": Key(boolean, True),         # move codes unused for `reinit_every` steps onto encoder outputs
    "reinit_every": Key(integer(), 200),
    "flip": Key(boolean, True),                      # random horizontal flips
    "grad_clip": Key(number(positive=True), 1.0),
}

VQ_CONFIGS = {
    "VQ_config_path": Key(text),                     # the stage-1 VQGAN config
    "VQ_CKPT_path": Key(optional_text, None),        # its weights (or --vqgan-ckpt)
}

TRANSFORMER_PARAM = {
    "num_image_tokens": Key(integer()),
    "num_codebook_vectors": Key(integer()),
    "dim": Key(integer()),
    "n_layers": Key(integer()),
    "hidden_dim": Key(integer()),
    "num_heads": Key(integer(), 16),
    "dropout": Key(number(0.0, below=1.0), 0.1),
    # attention-weight dropout, None: the same as `dropout`. 0 keeps the fused (sdpa) core fused
    "attn_dropout": Key(optional(number(0.0, below=1.0)), None),
    "attention": Key(choice(ATTENTION_KINDS), "sdpa"),  # sdpa (fused) or manual (the hand-written core); same weights
}

MASKGIT_PARAM = {
    "VQ_Configs": Key(VQ_CONFIGS),
    "num_image_tokens": Key(integer()),
    "num_codebook_vectors": Key(integer()),
    "choice_temperature": Key(number(), 4.5),        # Gumbel noise on the confidences when re-masking
    "gamma_type": Key(choice(GAMMA_FUNCTIONS), "cosine"),  # the mask schedule (models/schedules.py)
    "label_smoothing": Key(number(0.0, below=1.0), 0.0),
    "Transformer_param": Key(TRANSFORMER_PARAM),
}

MASKGIT_TRAIN = {
    "epochs": Key(integer(), 100),
    "batch_size": Key(integer(), 32),                # per process and micro-batch
    "learning_rate": Key(number(positive=True), 2e-4),
    "betas": Key(betas, [0.9, 0.96]),
    "warmup_steps": Key(integer(0), 500),
    "weight_decay": Key(number(), 0.045),            # AdamW, on the linear layers' weights only
    "grad_clip": Key(number(positive=True), 1.0),
    "accum_grad": Key(integer(), 1),                 # micro-batches per optimizer step
    "flip": Key(boolean, True),                      # the tokens of the image or of its mirror image, at random
    "embedding_init": Key(choice(("random", "codebook")), "random"),  # codebook: start from the VQGAN's codes
    "hole_mask_share": Key(number(0.0, below=1.0), 0.0),  # samples masked inside a generated hole, not anywhere
    # a token is in such a hole when more than this share of its pixels is hole (0: any pixel); the
    # rest of its pixels shows as context, as decoding keeps the tokens at most --token-hole-share hole
    "hole_token_share": Key(number(0.0, below=1.0), 0.0),
    # what such a sample shows around its hole: the clean image's tokens, or (prefilled) the tokens of
    # the image with the hole pre-filled by the nearest known pixel, which is what decoding encodes
    "hole_context": Key(choice(("clean", "prefilled")), "clean"),
    # augmentation: each sample's token grid (and its hole) moved by up to this many whole tokens
    # each way, the edge tokens repeated into what the move uncovers; 0 = off
    "shift_tokens": Key(integer(0), 0),
    # augmentation: the token cache also holds this many colour variants of each training image (its
    # channels reordered, data.COLOUR_ORDERS), encoded once; each sample takes one view at random
    "colour_variants": Key(integer(0, len(COLOUR_ORDERS)), 0),
}


def check_section(values: Any, table: dict[str, Key], path: str | os.PathLike, section: str) -> dict:
    """Check the mapping `values` against `table`: unknown keys and missing required keys are
    errors, every value is checked and normalized, absent optional keys get their defaults, and None
    (an empty YAML section) is an empty mapping. A Key whose check is a table is a nested section.
    Errors name `path` and `section`."""
    where = f"{path} ({section})"
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise UserError(f"{where}: must be a mapping of names to values, got {values!r}")
    unknown = [k for k in values if k not in table]
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(f'`{k}`' for k in unknown)}; "
                        f"known keys: {', '.join(table)}")
    checked = {}
    for key, spec in table.items():
        if key not in values:
            if spec.default is REQUIRED:
                raise UserError(f"{where}: missing key `{key}`")
            checked[key] = spec.default
        elif isinstance(spec.check, dict):
            checked[key] = check_section(values[key], spec.check, path, f"{section}.{key}")
        else:
            try:
                checked[key] = spec.check(key, values[key])
            except Invalid as err:
                raise UserError(f"{where}: {err}") from None
    return checked


def apply_overrides(train: dict, table: dict[str, Key], overrides: dict) -> dict:
    """`train` with the flags that were given (the `overrides` that are not None), checked by the
    same table as the file's values."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return {**train, **check_section(given, {k: table[k] for k in given}, "command line", "flags")}


# ----------------------------------------------------------------------------- loading

@dataclass(frozen=True)
class Config:
    """A checked config file: `model` is its model_param, `train` its train_param, defaults filled in."""
    path: Path
    model: dict
    train: dict


def read_yaml(path: str | os.PathLike) -> dict:
    """The top level of a YAML config: a mapping with `model_param` and, optionally, `train_param`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_param"), dict):
        raise UserError(f"{path}: missing the top-level `model_param` section")
    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(f'`{k}`' for k in unknown)}; "
                        f"known keys: {', '.join(TOP_LEVEL)}")
    return data


def check_vqgan_model(values: Any, path: str | os.PathLike) -> dict:
    """A VQGAN's model_param checked against its table and for consistency; errors name `path`."""
    where = f"{path} (model_param)"
    cfg = check_section(values, VQGAN_PARAM, path, "model_param")
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
    return cfg


def load_vqgan_file(path: str | os.PathLike) -> Config:
    """A VQGAN config (training_vqgan.py's): model_param and train_param checked."""
    path = Path(path)
    data = read_yaml(path)
    cfg = check_vqgan_model(data["model_param"], path)
    return Config(path, cfg, check_section(data.get("train_param"), VQGAN_TRAIN, path, "train_param"))


# a MaskGit model_param without the VQGAN's file paths: what an exported model carries (models/pretrained.py)
MASKGIT_MODEL = {k: v for k, v in MASKGIT_PARAM.items() if k != "VQ_Configs"}


def check_maskgit_model(values: Any, vq: dict, path: str | os.PathLike, vq_source: str | os.PathLike,
                        table: dict[str, Key] = MASKGIT_MODEL) -> dict:
    """A MaskGit model_param checked against `table` and against its checked VQGAN model_param `vq`
    (from `vq_source`), which it gets as cfg["vqgan"]; errors name `path`."""
    where = f"{path} (model_param)"
    cfg = check_section(values, table, path, "model_param")
    transformer = cfg["Transformer_param"]
    if transformer["dim"] % transformer["num_heads"]:
        raise UserError(f"{path} (model_param.Transformer_param): `dim` {transformer['dim']} is not divisible by "
                        f"`num_heads` {transformer['num_heads']}")
    for key in ("num_image_tokens", "num_codebook_vectors"):
        if transformer[key] != cfg[key]:
            raise UserError(f"{where}: `{key}` is {cfg[key]} but Transformer_param has {transformer[key]}")
    if vq["num_codebook_vectors"] != cfg["num_codebook_vectors"]:
        raise UserError(f"{where}: `num_codebook_vectors` is {cfg['num_codebook_vectors']} but the VQGAN config "
                        f"{vq_source} has {vq['num_codebook_vectors']}")
    if vq["latent_resolution"] ** 2 != cfg["num_image_tokens"]:
        raise UserError(f"{where}: `num_image_tokens` is {cfg['num_image_tokens']} but the VQGAN config "
                        f"{vq_source} gives {vq['latent_resolution']}x{vq['latent_resolution']} tokens")
    cfg["vqgan"] = vq
    return cfg


def load_maskgit_file(path: str | os.PathLike) -> Config:
    """A MaskGit config (the lab's structure, training_transformer.py's), checked against its VQGAN
    config. model_param gets `vqgan` (the checked VQGAN model_param) and resolved VQGAN paths."""
    path = Path(path)
    data = read_yaml(path)
    vq_paths = check_section(data["model_param"].get("VQ_Configs"), VQ_CONFIGS, path, "model_param.VQ_Configs")
    vq_config_path = resolve_path(vq_paths["VQ_config_path"], path.parent)
    vq = load_vqgan_file(vq_config_path).model
    cfg = check_maskgit_model(data["model_param"], vq, path, vq_config_path, MASKGIT_PARAM)
    cfg["VQ_Configs"] = {**vq_paths, "VQ_config_path": str(vq_config_path)}
    if vq_paths["VQ_CKPT_path"]:
        cfg["VQ_Configs"]["VQ_CKPT_path"] = str(resolve_path(vq_paths["VQ_CKPT_path"], path.parent))
    return Config(path, cfg, check_section(data.get("train_param"), MASKGIT_TRAIN, path, "train_param"))


def transformer_param(**values: Any) -> dict:
    """A checked Transformer_param from keyword values, defaults filled in: for building a
    transformer without a config file (tests, benchmarks)."""
    return check_section(values, TRANSFORMER_PARAM, "arguments", "Transformer_param")


def load_vqgan_config(path: str | os.PathLike) -> dict:
    """The checked `model_param` of a VQGAN config."""
    return load_vqgan_file(path).model


def load_maskgit_config(path: str | os.PathLike) -> dict:
    """The checked `model_param` of a MaskGit config, with its VQGAN's as `vqgan`."""
    return load_maskgit_file(path).model
