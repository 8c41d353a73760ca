"""Exported models: self-describing folders that carry their resolved config, their weights in
safetensors and, for a transformer, the content digest of the VQGAN it was trained on.

    checkpoints/vqgan_local/        config.json  model.safetensors   (kind "vqgan")
    checkpoints/transformer_local/  config.json  model.safetensors   (kind "maskgit")

config.json holds `format`, `kind`, `config` (the checked model_param; a MaskGit's includes its
VQGAN's as `vqgan`), `vqgan` for a transformer ({"digest": ..., "path": the VQGAN folder relative to
this one}), and facts (`run`, `data`, `license`, `converted_from`). A weights digest is the SHA-256
of the tensors' names, shapes and values rounded to float16 (the precision of exports), so the same
weights give the same digest in a torch file and in safetensors, and a run's float32 weights the
digest of their float16 export. Training checkpoints stay
torch.save files (resumable state); this format is for finished weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from common import (
    REPO_ROOT,
    WEIGHTS_FILE,
    UserError,
    check_destination,
    check_readable,
    file_sha256,
    half_state_dict,
    load_checkpoint,
    read_safetensors,
    read_weights,
)
from models.config import check_maskgit_model, check_vqgan_model

FORMAT = 1
CONFIG_FILE = "config.json"
KINDS = ("vqgan", "maskgit")
DEFAULT_MODEL = REPO_ROOT / "checkpoints" / "transformer_local"
DEFAULT_CONFIG = "configs/small/MaskGit_local.yml"  # DEFAULT_MODEL's recipe (repo-relative, as flags spell it)
DEFAULT_VQGAN_CONFIG = "configs/small/VQGAN_local.yml"  # that of the VQGAN it names
TRANSFORMER_KEYS = ("tok_emb.", "pos_emb", "blocks.", "token_prediction.")  # a BidirectionalTransformer's weights


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """Content digest of a state_dict: names, shapes and values (floating point rounded to float16)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu()
        value = value.half() if value.is_floating_point() else value
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.contiguous().view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return "sha256:" + digest.hexdigest()


def is_exported(path: str | os.PathLike) -> bool:
    """Whether `path` is an exported model folder (rather than a torch checkpoint file)."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_description(path: str | os.PathLike, kind: str) -> dict:
    """config.json of an exported folder, checked to be of `kind` ("vqgan" or "maskgit")."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"{path} is not an exported model folder (no {CONFIG_FILE})")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") not in KINDS:
        raise UserError(f"{file} is not an exported model description (format {FORMAT}, kind vqgan or maskgit)")
    if meta["kind"] != kind:
        raise UserError(f"{path} holds a {meta['kind']} model, not a {kind} one")
    return meta


def export_origin(source: str | os.PathLike, file: bool = False) -> str:
    """What an export comes from, recorded as `origin` in its config.json: the run folder `source`
    (a digest of its resolved path) or, with `file`, the weights file (its SHA-256). An export may
    replace only an export of the same kind and origin (check_export_destination)."""
    if file:
        return "file:" + file_sha256(source)
    return "run:" + hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:16]


def check_export_destination(dest: str | os.PathLike, flag: str, kind: str, origin: str,
                             inputs: Sequence[str | os.PathLike | None], overwrite: bool = False) -> Path:
    """The destination of an export, checked before anything is read (common.check_destination): not
    an input of the run (`inputs`), and when it exists, an earlier export of the same `kind` and
    `origin`, or with `overwrite` another model folder. A folder that is no exported model is
    never replaced."""
    dest = Path(dest)
    if dest.exists() and not is_exported(dest):
        raise UserError(f"{flag} {dest} exists and is not an exported model folder; choose a new folder for the export")

    def replaceable(path: Path) -> str | None:
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return f"holds an unreadable {CONFIG_FILE}"
        if not isinstance(meta, dict) or meta.get("kind") != kind:
            return f"holds a {meta.get('kind') if isinstance(meta, dict) else 'unknown'} model, not a {kind} one"
        if meta.get("origin") != origin:
            source = "file" if origin.startswith("file:") else "run"
            return f"holds another {kind} model (not an export of this {source})"
        return None
    return check_destination(dest, flag, inputs=inputs, replaceable=replaceable, overwrite=overwrite)


def write_exported(dest: str | os.PathLike, kind: str, module: nn.Module, config: dict, origin: str,
                   **facts: object) -> str:
    """Write `module`'s weights (float16) and its description, with `origin` (export_origin), to the
    folder `dest`, replacing an earlier export there (check_export_destination says which may be
    replaced; any other existing file or folder is refused). Returns the digest."""
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.exists() and not is_exported(dest):
        raise UserError(f"{dest} exists and is not an exported model folder; choose a new folder for the export")
    state = {k: v.contiguous() for k, v in half_state_dict(module).items()}
    digest = weights_digest(state)
    meta = {"format": FORMAT, "kind": kind, "digest": digest, "origin": origin, "config": config, **facts}
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(state, tmp / WEIGHTS_FILE, metadata={"kind": kind, "digest": digest})
        (tmp / WEIGHTS_FILE).chmod(0o644)  # safetensors creates it readable by its owner only
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return digest


def vqgan_config(path: str | os.PathLike) -> dict:
    """The checked VQGAN model_param an exported VQGAN folder carries."""
    return check_vqgan_model(read_description(path, "vqgan")["config"], Path(path) / CONFIG_FILE)


def vqgan_config_of(path: str | os.PathLike, default: dict) -> dict:
    """The VQGAN model_param the weights at `path` were made with: an exported folder's own
    (vqgan_config), a training checkpoint's recorded one, else `default` for plain weights such as
    the lab's VQGAN.pt, which record none."""
    if is_exported(path):
        return vqgan_config(path)
    if Path(path).is_file():
        checkpoint = load_checkpoint(path)
        if "vqgan" in checkpoint and isinstance(checkpoint.get("config"), dict):
            return check_vqgan_model(checkpoint["config"], path)
    return default


def maskgit_config(path: str | os.PathLike) -> dict:
    """The checked MaskGit model_param (with `vqgan`) an exported transformer folder carries."""
    config = read_description(path, "maskgit").get("config")
    where = Path(path) / CONFIG_FILE
    if not isinstance(config, dict):
        raise UserError(f"{where}: missing `config`")
    vq = check_vqgan_model(config.get("vqgan"), where)
    return check_maskgit_model({k: v for k, v in config.items() if k != "vqgan"}, vq, where, where)


def weights_file(path: str | os.PathLike) -> Path:
    """The file that holds the weights: an exported folder's model.safetensors, or `path` itself."""
    return Path(path) / WEIGHTS_FILE if is_exported(path) else Path(path)


def vqgan_file_digests(path: str | os.PathLike) -> set[str]:
    """The SHA-256 file digests a VQGAN's weights are known by in training checkpoints (which record
    file_sha256 of the VQGAN file they were trained on): the file's own, or for an exported folder
    its model.safetensors' and those of the files it was converted from."""
    if not is_exported(path):
        return {file_sha256(path)}
    sources = read_description(path, "vqgan").get("converted_from", [])
    return {file_sha256(weights_file(path)), *(source["sha256"] for source in sources)}


def known_pixels_record(vqgan_path: str | os.PathLike) -> dict:
    """What an exported known-pixel VQGAN records of its fit (training_vqgan.py --fit-known-pixels):
    from_digest, steps and val_hole_psnr; {} for any other VQGAN."""
    if not is_exported(vqgan_path):
        return {}
    return read_description(vqgan_path, "vqgan").get("known_pixels", {})


def known_pixels_parent(vqgan_path: str | os.PathLike) -> str | None:
    """The weights digest of the VQGAN an exported known-pixel VQGAN was fitted from: same encoder
    and codebook, so the same tokens; else None."""
    return known_pixels_record(vqgan_path).get("from_digest")


def checked_vqgan_digest(vqgan_path: str | os.PathLike, state: dict[str, torch.Tensor], expected: str | None,
                         model: str | os.PathLike, flag: str = "--vqgan") -> str:
    """The content digest of the VQGAN weights `state` (read from `vqgan_path`); a UserError naming
    both when neither it nor the digest of the VQGAN it is a known-pixel fit of is `expected`, the
    digest transformer `model` was trained with (`flag`: the option that picks the VQGAN, for the
    message)."""
    digest = weights_digest(state)
    if expected is not None and digest != expected and known_pixels_parent(vqgan_path) != expected:
        raise UserError(f"the transformer {model} was trained on another VQGAN than {vqgan_path} "
                        f"({expected[:19]}... expected, {digest[:19]}... found); pass the VQGAN it was "
                        f"trained on ({flag})")
    return digest


def check_trained_on(checkpoint: dict, source: str | os.PathLike, vqgan_ckpt: str | os.PathLike,
                     flag: str = "--vqgan-ckpt") -> None:
    """A training checkpoint records the VQGAN file its tokens came from (`vqgan_digest`): one
    UserError when `vqgan_ckpt` is not that file (or one it was converted from)."""
    if checkpoint.get("vqgan_digest") not in vqgan_file_digests(vqgan_ckpt):
        raise UserError(f"{source} was trained on another VQGAN file than {vqgan_ckpt}; pass {flag} with "
                        "the one it was trained on")


def vqgan_path_of(model: str | os.PathLike) -> Path | None:
    """The VQGAN folder an exported transformer names (relative to itself), when it names one."""
    relative = read_description(model, "maskgit").get("vqgan", {}).get("path")
    return None if relative is None else (Path(model) / relative).resolve()


def read_model_weights(path: str | os.PathLike, kind: str) -> dict[str, torch.Tensor]:
    """The weights of the exported `kind` folder `path`, verified against the digest its config.json
    records: the one check on load of a model folder, for a transformer and a VQGAN alike. A folder
    without config.json, damaged or edited weights, or a missing digest is a UserError."""
    meta = read_description(path, kind)
    state = read_safetensors(check_readable(Path(path) / WEIGHTS_FILE, "weights", folder=False))
    digest = weights_digest(state)
    if meta.get("digest") != digest:
        recorded = str(meta.get("digest"))[:19]
        raise UserError(f"{Path(path) / WEIGHTS_FILE} does not match the digest in its {CONFIG_FILE} ({recorded}... "
                        f"recorded, {digest[:19]}... found): damaged or edited weights; export or copy it again")
    return state


def read_vqgan_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A VQGAN's state_dict from an exported folder (read_model_weights) or a torch file (the lab's
    VQGAN.pt); a transformer's weights are named as such."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"VQGAN weights not found: {path}")
    if path.is_dir():
        return read_model_weights(path, "vqgan")
    state = read_weights(check_readable(path, "VQGAN weights", folder=False), key="vqgan")
    if any(k.startswith(TRANSFORMER_KEYS) for k in state) or "model" in state:
        raise UserError(f"{path} holds transformer weights, not a VQGAN; pass the VQGAN it was trained on")
    return state
