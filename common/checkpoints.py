"""Checkpoints and weights as data: torch files loaded with weights_only=True, safetensors files,
written atomically, loaded strictly with every mismatch named."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from common.errors import UserError
from common.files import atomic_write

WEIGHTS_FILE = "model.safetensors"  # an exported model folder's weights


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through atomic_write: a checkpoint is always whole."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


# numpy's RNG state (in rng_state()) holds an ndarray: allow exactly what unpickling one needs
_NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, np.array(0).__reduce__()[0], type(np.dtype(np.uint32))]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    keys: Sequence[str] = ()) -> dict:
    """Load a checkpoint as data (weights_only=True, plus numpy arrays for the RNG state). A missing,
    empty or damaged file, one that does not hold a dict, or (`keys`: the entries a training
    checkpoint has) one without all of `keys`, such as plain weights, is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types, some with no message, for truncated or foreign files
        detail = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot read checkpoint {path} (truncated or not a PyTorch checkpoint): {detail}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict of weights")
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a training checkpoint (no {', '.join(missing)}): plain weights "
                        "cannot be resumed from")
    return checkpoint


def extract_state_dict(checkpoint: dict, key: str) -> dict:
    """A plain state_dict (the lab's VQGAN.pt) or the `key` entry of a training checkpoint."""
    if key in checkpoint and isinstance(checkpoint[key], dict):
        return checkpoint[key]
    return checkpoint


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an exported folder's model.safetensors (or of a .safetensors file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"weights not found: {file}")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"cannot read {file} (truncated or not safetensors): {str(err)[:200]}") from None


def read_weights(path: str | os.PathLike, key: str = "model") -> dict:
    """The state_dict stored at `path`: an exported folder or .safetensors file (read_safetensors),
    a plain state_dict such as the lab's VQGAN.pt, or the `key` entry of a training checkpoint; keys
    without the prefixes torch.compile and DDP add."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        state = extract_state_dict(load_checkpoint(path), key)
    return {str(k).removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}


def load_state(module: nn.Module, state: dict, source: str | os.PathLike) -> None:
    """Load `state` into `module` strictly, naming (after `source`) any missing, unexpected or
    mis-shaped keys and NaN/inf weights. Half-precision weights are cast to the module's dtype."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{source} holds NaN or infinite weights ({len(bad)} tensor(s), e.g. {bad[0]}): "
                        "a diverged run? Use an earlier checkpoint")
    own = module.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(own[k].shape)}"
             for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatch (checkpoint vs config)", wrong)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise UserError(f"{source} does not match the model built from the config: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_weights(module: nn.Module, path: str | os.PathLike, key: str = "model") -> None:
    """Load the weights at `path` (see read_weights) into `module` (see load_state)."""
    load_state(module, read_weights(path, key), path)


def half_state_dict(module: nn.Module) -> dict:
    """Floating-point weights in float16, for shipped checkpoints (loading restores float32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}
