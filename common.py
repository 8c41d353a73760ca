"""Shared plumbing for every script: user errors, configs' files, devices, checkpoints, logging,
learning-rate schedule and distributed set-up. One copy here instead of one per script."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parent


class UserError(Exception):
    """Bad input from the user (missing file, wrong shape, bad flag). CLIs print it and exit 2."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(): a UserError becomes one line on stderr and exit code 2, no traceback."""
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


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op context on the CPU, where training stays fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_per_rank(obj: object, world_size: int) -> list:
    """Every rank's `obj` (e.g. its rng_state()), indexed by rank, for rank 0's checkpoint. Under DDP
    this is a collective: every rank must call it."""
    if world_size == 1:
        return [obj]
    objects: list = [None] * world_size
    dist.all_gather_object(objects, obj)
    return objects


def restore_rng_state(states: list[dict], rank: int) -> None:
    """Set this rank's RNG states from a checkpoint's list (rank 0's if the run had fewer ranks)."""
    set_rng_state(states[rank] if rank < len(states) else states[0])


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed, so a
    kill at any moment leaves either the old checkpoint or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def load_weights(module: nn.Module, path: str | os.PathLike, key: str = "model") -> dict:
    """Load weights into `module` strictly, naming any missing, unexpected or mis-shaped keys.
    Half-precision checkpoints are cast to the module's dtype. Returns the whole checkpoint."""
    checkpoint = load_checkpoint(path)
    state = extract_state_dict(checkpoint, key)
    state = {str(k).removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{path} holds NaN or infinite weights ({len(bad)} tensor(s), e.g. {bad[0]}): "
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
        raise UserError(f"{path} does not match the model built from the config: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return checkpoint


def half_state_dict(module: nn.Module) -> dict:
    """Floating-point weights in float16, for shipped checkpoints (loading restores float32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- hyper-parameters

def merge_train_param(defaults: dict, section: dict | None, overrides: dict, where: str) -> dict:
    """Training hyper-parameters: `defaults`, then a config's `train_param` section, then the flags
    that were given (the `overrides` that are not None). An unknown key in the section is an error,
    since a misspelt one would otherwise be ignored without a word."""
    section = section or {}
    if not isinstance(section, dict):
        raise UserError(f"{where}: `train_param` must be a mapping of names to values")
    unknown = sorted(set(section) - set(defaults))
    if unknown:
        raise UserError(f"{where}: unknown train_param key(s) {', '.join(unknown)}; "
                        f"known keys: {', '.join(sorted(defaults))}")
    return {**defaults, **section, **{k: v for k, v in overrides.items() if v is not None}}


# ----------------------------------------------------------------------------- schedule

def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup from 0 to 1, then cosine decay to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- distributed

def setup_distributed(device_name: str | None) -> tuple[int, int, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE set) join the process group: NCCL on GPUs, gloo on the CPU.
    Returns (rank, world_size, device); a plain run is rank 0 of 1."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, resolve_device(device_name)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = (device_name or "cuda").startswith("cuda") and torch.cuda.is_available()
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = resolve_device("cpu")
    dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    return rank, world, device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- logging

class RunLog:
    """Appends one JSON object per line to `log.jsonl` in the run folder (rank 0 only) and keeps the
    records in memory for plotting."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(run_dir) / "log.jsonl"
        self.enabled = enabled
        self.records: list[dict] = []
        if enabled and self.path.exists():
            self.records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run repeats them)."""
        if not self.enabled:
            return
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, **record: object) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, path: str | os.PathLike, panels: dict[str, list[str]]) -> None:
        """One PNG with a panel per entry of `panels` ({title: [metric keys]}), metric vs step."""
        if not self.enabled or not self.records:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (title, keys) in zip(axes[0], panels.items()):
            for key in keys:
                points = [(r["step"], r[key]) for r in self.records if key in r and r[key] is not None]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=key)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = Path(path).with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write a list of dicts as CSV (columns in first-seen order), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- training loops

class ResumableSampler(torch.utils.data.Sampler):
    """The epoch's shuffled order from torch's DistributedSampler (this rank's share, same for a
    given seed and epoch), minus the first `skip` indices: a resumed run continues mid-epoch with
    exactly the batches it had not seen."""

    def __init__(self, dataset_size: int, seed: int, epoch: int, skip: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        sampler = torch.utils.data.DistributedSampler(range(dataset_size), num_replicas=world_size, rank=rank,
                                                      shuffle=shuffle, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        self.indices = list(sampler)[skip:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def check_finite(loss: torch.Tensor, step: int, checkpoint_path: str | os.PathLike) -> None:
    """Stop the run on a NaN or inf loss; the last checkpoint written stays as it is."""
    if not torch.isfinite(loss).all():
        raise UserError(f"loss is {loss.item()} at step {step}; stopping. The last good checkpoint is "
                        f"{checkpoint_path} (resume from it with a lower learning rate)")
