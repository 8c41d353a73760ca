"""Shared plumbing for every script: user errors, configs' files, devices, seeding, atomic files
and checkpoints. One copy here instead of one per script; the training-only half (RNG state,
distributed set-up, LR schedule, run log, sampler) is in training.py."""
from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parent


class UserError(Exception):
    """Bad input from the user (missing file, wrong shape, bad flag). CLIs print it and exit 2."""


def _one_line_warning(message: Warning | str, *args: object, **kwargs: object) -> str:
    return f"warning: {message}\n"


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(): a UserError becomes one line on stderr and exit code 2, no traceback;
    warnings are one line each ("warning: ...")."""
    warnings.formatwarning = _one_line_warning
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def resolve_path(path: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> Path:
    """Find a file named in a config: as given (from the working directory), then beside the
    config that names it, then from the repository root."""
    path = Path(path)
    candidates = [path]
    if not path.is_absolute():
        if relative_to is not None:
            candidates.append(Path(relative_to) / path)
        candidates.append(REPO_ROOT / path)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return path


# ----------------------------------------------------------------------------- flags and output folders

def check_minimum(args: object, minimum: int, *flags: str) -> None:
    """Each of `flags` ("--batch-size", "--num_workers": the attribute of `args` is the name without
    dashes), when given, must be at least `minimum`."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be at least {minimum}, got {value}")


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_output_dir(out: str | os.PathLike, flag: str, writes: Sequence[str] = (),
                     inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Check, before anything is read or written, that `out` can be the folder where a run writes
    (or replaces) the entries `writes` (names inside it; "." for the whole folder): it is not a file,
    it or its nearest existing parent is writable, and no input file or folder in `inputs` (None
    skipped) is one of those entries, inside one or holds one. Does not create the folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: {existing} is not writable")
    for source in inputs:
        if source is None:
            continue
        resolved = Path(source).resolve()
        for name in writes:
            if _overlap((out / name).resolve(), resolved):
                raise UserError(f"{flag} {out} overlaps the input {source} (this run writes "
                                f"{out / name if name != '.' else out}); choose another {flag}")
    return out


# ----------------------------------------------------------------------------- devices

def resolve_device(name: str | torch.device | None = None, cpu_fallback: bool = False) -> torch.device:
    """'cuda', 'cuda:1', 'cpu' or None (= cuda when available). CUDA asked for but missing is an
    error unless the user allowed falling back to the CPU."""
    name = str(name) if isinstance(name, torch.device) else name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r} (use cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            if cpu_fallback:
                print(f"warning: {name} is not available on this machine; running on the CPU", file=sys.stderr)
                return torch.device("cpu")
            raise UserError(f"{name} was asked for but CUDA is not available on this machine "
                            "(use --device cpu, or --cpu-fallback)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{name} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


DEFAULT_NUM_WORKERS = min(4, (os.cpu_count() or 2) // 2)  # image loader processes of inference and FID


_told_no_bf16: set[str] = set()  # the devices native_bf16 has said so for


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` is a GPU with bf16 arithmetic in hardware (compute capability 8.0 on,
    e.g. not a T4 or V100, where bf16 is emulated and slow); said once per device when not."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    if not torch.cuda.is_available() or torch.cuda.is_bf16_supported(including_emulation=False):
        return True  # without CUDA there is no GPU to ask, and using the device fails anyway
    if str(device) not in _told_no_bf16:
        _told_no_bf16.add(str(device))
        print(f"note: {torch.cuda.get_device_name(device)} has no native bf16: running in fp32 instead",
              file=sys.stderr)
    return False


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA GPUs with native bf16 (native_bf16); a no-op context elsewhere, where
    training stays fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and native_bf16(device))


def numerics(device: torch.device | str) -> dict:
    """What, besides inputs and weights, changes fp32 results slightly on `device`, for cache keys:
    the device type, TF32 matrix products and convolutions on CUDA, a lower fp32 matmul precision
    anywhere. Empty on a CPU at full precision, so that keys made before this stay valid there."""
    device = torch.device(device)
    facts: dict = {} if device.type == "cpu" else {"device": device.type}
    if torch.get_float32_matmul_precision() != "highest":
        facts["matmul_precision"] = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        facts |= {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    return facts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- files and checkpoints

@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder (same suffix, for writers that go by it); when the
    block ends without error the file is flushed to disk and renamed to `path`. A kill at any moment
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # TEMP_NAME below
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)\.tmp(?P<suffix>\.[^.]+)?")  # atomic_write's temporary files


def _process_alive(pid: int) -> bool:
    """Whether `pid` is a running process (one of another user counts; so does this one)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def remove_orphaned_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that atomic_write left in `folder` (not its subfolders) when its
    process was killed mid-write: only names of its pattern whose process is gone, so a live
    writer's file stays. Returns the removed paths. POSIX only (elsewhere removes nothing)."""
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMP_NAME.fullmatch(path.name)
        if match and path.is_file() and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def read_weights(path: str | os.PathLike, key: str = "model") -> dict:
    """The state_dict stored at `path`: an exported folder or .safetensors file (models/pretrained.py),
    a plain state_dict such as the lab's VQGAN.pt, or the `key` entry of a training checkpoint; keys
    without the prefixes torch.compile and DDP add."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        from models.pretrained import read_safetensors  # safetensors is only needed for these files
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


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write a list of dicts as CSV (columns in first-seen order), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
