"""The run skeleton both training stages (training.vqgan, training.transformer) share: flags, RNG
state, distributed set-up, LR schedule, the per-epoch resumable sampler, the run log, and one resume
path and one save path for the checkpoints. Each stage keeps its own model, step function and
validation."""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from common import (
    UserError,
    atomic_write,
    check_minimum,
    check_output_dir,
    check_readable,
    check_seed,
    check_writable,
    load_checkpoint,
    load_state,
    progress_bar,
    remove_orphaned_temp_files,
    resolve_device,
    save_checkpoint,
    spelled,
)
from data import ImageFolderDataset, apply_mask, normalize, read_image
from data.masks import dataset_mask
from models.pretrained import check_export_destination, export_origin, write_exported

HOLE_BANK_SIZE = 4096  # generated holes (data.masks.pixel_hole_bank) that training holes are drawn from
VAL_HOLE_SEED = 1      # the val inpainting holes (dataset_mask by name; the test masks use the dataset's seed, 0)


def val_inpainting_set(val_set: ImageFolderDataset, count: int) -> tuple[list, np.ndarray]:
    """`count` val images spread over the split, each with a fixed test-like hole (seeded by its
    name): ([(masked image (3, H, W), hole (1, H, W), index)], ground truth (count, H, W, 3) uint8)."""
    picks = np.linspace(0, len(val_set) - 1, min(count, len(val_set))).round().astype(int)
    items, gt = [], []
    for i, index in enumerate(picks):
        image = read_image(val_set.files[index], "RGB", val_set.size)
        mask = dataset_mask(val_set.files[index].stem, val_set.size, VAL_HOLE_SEED)
        items.append((normalize(apply_mask(image, mask), val_set.mean, val_set.std),
                      torch.from_numpy(mask < 128)[None], i))
        gt.append(image)
    return items, np.stack(gt)


# ----------------------------------------------------------------------------- flags


def add_run_arguments(p: argparse.ArgumentParser, *, config: str, run_dir: str, save_every: int,
                      log_every: int) -> None:
    """The flags both training scripts take, each under both spellings (this repository's and the
    lab's), with the script's defaults."""
    p.add_argument(*spelled("--config"), default=config, help="YAML config")
    p.add_argument(*spelled("--train-path"), nargs="+", default=["datasets/twemoji/train"],
                   help="folder(s) of training images, e.g. two emoji styles (default: %(default)s)")
    p.add_argument(*spelled("--val-path"), default="datasets/twemoji/val", help="folder of validation images")
    p.add_argument(*spelled("--run-dir"), default=run_dir,
                   help="run folder: checkpoints, log, curves (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument(*spelled("--num-workers"), type=int, default=2, help="image loader workers")
    p.add_argument("--batch-size", type=int, default=None, help="per process (overrides train_param)")
    p.add_argument("--epochs", type=int, default=None, help="overrides train_param")
    p.add_argument("--learning-rate", type=float, default=None, help="overrides train_param")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in total (the LR schedule still spans --epochs)")
    p.add_argument(*spelled("--save-every"), type=int, default=save_every,
                   help="write last.pt every N steps (and at each epoch end; default: %(default)s)")
    p.add_argument("--log-every", type=int, default=log_every,
                   help="write the training losses to log.jsonl every N steps (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--export", metavar="DEST", help="write RUN_DIR/best.pt's weights as an exported folder (float16 "
                   "safetensors + config.json) at DEST and exit (it may replace only an earlier export of this run)")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace another model folder at DEST")


def check_run_arguments(args: argparse.Namespace, run_dir_flag: str = "--run-dir") -> None:
    """Refuse flag values that would fail later or silently do nothing; `run_dir_flag` is the
    script's usual spelling of the run folder's flag, for the messages."""
    if Path(args.run_dir).suffix == ".pt":
        raise UserError(f"{run_dir_flag} is the run folder (last.pt, best.pt, logs go inside it), "
                        f"not a file: {args.run_dir}")
    check_output_dir(args.run_dir, run_dir_flag)
    run_dir = Path(args.run_dir).resolve()
    for data in (*args.train_path, args.val_path):
        if run_dir.is_relative_to(Path(data).resolve()):
            raise UserError(f"{run_dir_flag} {args.run_dir} is inside the image folder {data}: the run's figures "
                            f"would be read as images; choose another {run_dir_flag}")
    check_minimum(args, 1, "--batch-size", "--epochs", "--max-steps", "--save-every", "--log-every")
    check_minimum(args, 0, "--num_workers")
    check_seed(args.random_seed, "--random-seed")
    check_readable(args.config, "--config", folder=False)
    for data in args.train_path:
        check_readable(data, "--train-path", folder=True)
    check_readable(args.val_path, "--val-path", folder=True)
    if getattr(args, "cache_dir", None) is not None:
        check_writable(args.cache_dir, "--cache-dir")


# ----------------------------------------------------------------------------- RNG state

def rng_state(device: torch.device | None = None) -> dict:
    """The random states a resume restores: Python's, NumPy's, torch's CPU generator and, on a CUDA
    `device`, that device's generator only (each rank saves its own: a resume on another number of
    GPUs then finds one state per rank, not a list of all the GPUs the old machine had)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore rng_state()'s states; the CUDA one only on a CUDA `device` and when the run saved one.
    An older checkpoint's list of every GPU's state gives the device its own entry, else the first."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        index = (device.index or 0) if device is not None else 0
        cuda = (cuda[index] if index < len(cuda) else cuda[0]) if cuda else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def gather_per_rank(obj: object, world_size: int) -> list:
    """Every rank's `obj` (e.g. its rng_state()), indexed by rank, for rank 0's checkpoint. Under DDP
    this is a collective: every rank must call it."""
    if world_size == 1:
        return [obj]
    objects: list = [None] * world_size
    dist.all_gather_object(objects, obj)
    return objects


def restore_rng_state(states: list[dict], rank: int, device: torch.device | None = None) -> None:
    """Set this rank's RNG states from a checkpoint's list (rank 0's if the run had fewer ranks)."""
    set_rng_state(states[rank] if rank < len(states) else states[0], device)


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
    global _slow_group
    _slow_group = dist.new_group(backend="gloo", timeout=SLOW_WAIT)
    return rank, world, device


# how long the other ranks wait for rank 0's slow one-off work (building a token cache: minutes on
# a CPU); the main group keeps its default timeout, so that a real hang is caught in minutes
SLOW_WAIT = timedelta(hours=2)
_slow_group: dist.ProcessGroup | None = None  # a gloo group with the SLOW_WAIT timeout (setup_distributed)


def broadcast_from_main(obj: object, world: int) -> object:
    """Rank 0's `obj` (any picklable object, e.g. CPU tensors) on every rank; the others may wait
    up to SLOW_WAIT for it. A collective under DDP: every rank must call it."""
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_slow_group)
    return box[0]


@contextmanager
def distributed(device_name: str | None) -> Iterator[tuple[int, int, torch.device]]:
    """setup_distributed(), with the process group left however the run ends."""
    try:
        yield setup_distributed(device_name)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # and _slow_group


# ----------------------------------------------------------------------------- schedule and data order

def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup from 0 to 1, then cosine decay to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
                 ) -> torch.optim.lr_scheduler.LambdaLR:
    """warmup_cosine over `total_steps` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on the weights of linear layers; none on biases, norms, embeddings."""
    decayed = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]


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


def restart_hint(last_path: str | os.PathLike) -> str:
    """How to go on after a divergence: from `last_path` when it was written (every save checks its
    weights are finite, so it predates the divergence), else from scratch."""
    if Path(last_path).is_file():
        return (f"{last_path} holds the last good weights (checked finite when written): continue from it "
                "with --resume and a lower --learning-rate")
    return "no checkpoint was written yet: start again with a lower --learning-rate"


def check_finite(loss: torch.Tensor, step: int, last_path: str | os.PathLike, world: int = 1) -> None:
    """Stop the run on a NaN or inf loss, before the optimizer step; last.pt stays as it is. Under
    DDP (`world` > 1) the ranks first agree, so that every rank stops at the same step instead of
    the others hanging in the next collective: rank 0 raises the UserError, the others exit quietly
    with its exit code (2)."""
    bad = ~torch.isfinite(loss.detach()).all()
    if world == 1:
        if bad:
            raise UserError(f"loss is {loss.item()} at step {step}; stopping. {restart_hint(last_path)}")
        return
    flags = torch.zeros(world, device=loss.device)
    flags[dist.get_rank()] = bad.float()
    dist.all_reduce(flags)  # (world,) 1 where that rank's loss is NaN or inf
    ranks = flags.nonzero().flatten().tolist()
    if not ranks:
        return
    if dist.get_rank() != 0:
        raise SystemExit(2)
    raise UserError(f"loss is NaN or infinite at step {step} on rank(s) {', '.join(map(str, ranks))} of {world}; "
                    f"every rank stops. {restart_hint(last_path)}")


def first_nonfinite(obj: object, name: str = "") -> str | None:
    """The name of the first floating-point tensor in `obj` (nested dicts and lists, e.g. state
    dicts of modules and optimizers) that holds a NaN or inf; None when all are finite."""
    if isinstance(obj, torch.Tensor):
        return name if obj.is_floating_point() and not torch.isfinite(obj).all() else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = first_nonfinite(value, f"{name}.{key}" if name else str(key))
        if found:
            return found
    return None


# ----------------------------------------------------------------------------- the loop

def run_epochs(step: int, steps_per_epoch: int, stop_at: int, epochs: int, *, is_main: bool, log: RunLog,
               log_every: int, save_every: int, batches: Callable[[int, int], Iterable],
               train_step: Callable[[Any, int], tuple[dict[str, str], bool]],
               log_entry: Callable[[int, int], dict], validate: Callable[[int, int], bool],
               state: Callable[[int], dict], run_dir: Path, weights: tuple[str, nn.Module],
               parts: dict[str, Stateful], val_every: int = 1, snapshot_every: int = 0) -> int:
    """Train from `step` to `stop_at`, epoch by epoch; returns the steps done. Each epoch runs over
    `batches(epoch, steps_done_in_it)` (the rest of its ResumableSampler order) under a progress bar.
    After each `train_step(batch, step)` (-> the bar's postfix, and whether to log this step even
    off the --log-every grid) it writes `log_entry(step, epoch)` every `log_every` steps; it runs
    `validate(step, epoch)` (-> improved) every `val_every` epochs and at the end; and it saves
    `state(step)` (a collective under DDP: every rank builds it) as last.pt, best.pt when improved
    and an epochNNN.pt snapshot every `snapshot_every` epochs, every `save_every` steps, at epoch
    ends and at the end."""
    while step < stop_at:
        epoch, done = divmod(step, steps_per_epoch)
        bar = progress_bar(batches(epoch, done), desc=f"epoch {epoch + 1}/{epochs}", enabled=is_main, initial=done,
                           total=steps_per_epoch)
        for batch in bar:
            postfix, log_now = train_step(batch, step)
            step += 1
            bar.set_postfix(postfix, refresh=False)
            epoch_end, finished = step % steps_per_epoch == 0, step >= stop_at
            if step % log_every == 0 or log_now:
                log.write(**log_entry(step, epoch))
            improved = False
            if (epoch_end and (epoch + 1) % val_every == 0) or finished:
                improved = validate(step, epoch)
            if epoch_end or finished or step % save_every == 0:
                run = state(step)
                snapshot = epoch_end and snapshot_every and (epoch + 1) % snapshot_every == 0
                if is_main:
                    save_run(run_dir, run, weights, improved, f"epoch{epoch + 1:03d}.pt" if snapshot else None,
                             resume_only(parts))
            if finished:
                break
    return step


# ----------------------------------------------------------------------------- checkpoints

class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


def resume_source(run_dir: Path, resume: bool, snapshot: Path | None = None, *, weights: tuple[str, str]
                  ) -> Path | None:
    """The checkpoint a run continues from: `snapshot` when given, RUN_DIR/last.pt with --resume,
    else none; a new run refuses to overwrite an existing one. Also tidies what a kill can leave in
    the run folder (rank 0 only): orphaned temporary files, and, on a resume, plain weights
    (`weights` = (file name, checkpoint key)) missing or older than best.pt."""
    last = run_dir / "last.pt"
    source = snapshot or (last if resume else None)
    if source is None and last.exists():
        raise UserError(f"{last} exists: pass --resume to continue that run, or choose another --run-dir")
    if os.environ.get("RANK", "0") == "0":
        removed = remove_orphaned_temp_files(run_dir)
        if removed:
            print(f"removed {len(removed)} temporary file(s) left by killed writes in {run_dir}: "
                  + ", ".join(p.name for p in removed))
        if source is not None:
            restore_plain_weights(run_dir, *weights)
    return source


def restore_plain_weights(run_dir: Path, name: str, key: str) -> None:
    """Rewrite RUN_DIR/`name` from best.pt's `key` entry when it is missing or not newer than best.pt:
    what a kill between save_run's two writes leaves."""
    best, plain = run_dir / "best.pt", run_dir / name
    if not best.is_file() or (plain.is_file() and plain.stat().st_mtime_ns > best.stat().st_mtime_ns):
        return
    save_checkpoint(load_checkpoint(best, keys=(key,))[key], plain)
    print(f"rewrote {plain} from {best} (it was missing or older, as a kill during a save leaves it)")


# train_param keys a resume cannot change, and why
FIXED_ON_RESUME = {
    "batch_size": "the run's data position and LR schedule are counted in its steps",
    "accum_grad": "the run's data position and LR schedule are counted in its steps",
    "betas": "it is part of the optimizer's saved state",
    "weight_decay": "it is part of the optimizer's saved state",
}


def reconcile_train_param(state: dict, source: Path, tcfg: dict) -> list[str]:
    """Compare this run's train_param with the checkpoint's: a change of a FIXED_ON_RESUME key is a
    UserError; the other changes are returned as "key old -> new" (they apply from here on)."""
    saved = state.get("train_param") or {}
    changes = []
    for key, new in tcfg.items():
        if key not in saved or saved[key] == new:
            continue
        if key in FIXED_ON_RESUME:
            raise UserError(f"{key} is {new} now (flag or config) but {saved[key]} in {source}, and a resumed run "
                            f"cannot change it ({FIXED_ON_RESUME[key]}): resume with {saved[key]}, or start a new "
                            "run in another run folder")
        changes.append(f"{key} {saved[key]} -> {new}")
    return changes


def reschedule(parts: dict[str, Stateful], old_lr: float, new_lr: float) -> list[tuple[float, float]]:
    """After loading, put every LR schedule among `parts` on this run's schedule: base LRs scaled
    by `new_lr / old_lr`, and the current LR recomputed from this run's lambda (whose length and
    warmup follow this run's epochs and warmup_steps). Returns each changed group's (old, new) LR."""
    changed = []
    for part in parts.values():
        if not isinstance(part, torch.optim.lr_scheduler.LambdaLR):
            continue
        if new_lr != old_lr:
            part.base_lrs = [base * new_lr / old_lr for base in part.base_lrs]
        for group, base, fn in zip(part.optimizer.param_groups, part.base_lrs, part.lr_lambdas):
            group["initial_lr"] = base
            lr = base * fn(part.last_epoch)
            if lr != group["lr"]:
                changed.append((group["lr"], lr))
                group["lr"] = lr
    return changed


def changed_model_keys(state: dict, cfg: dict | None) -> list[str]:
    """The model_param values (numbers and names, e.g. label_smoothing, gamma_type) that differ
    from the checkpoint's, as "key old -> new": they apply from here on, so a resume says so."""
    saved = state.get("config") or {}
    return [f"{key} {saved[key]} -> {new}" for key, new in (cfg or {}).items()
            if key in saved and not isinstance(new, dict) and saved[key] != new]


def restore(state: dict, parts: dict[str, Stateful], rank: int, source: Path, config: str | os.PathLike, *,
            tcfg: dict, total_steps: int, stop_at: int, device: torch.device | None = None,
            cfg: dict | None = None) -> None:
    """Load a training checkpoint's entries into `parts` ({checkpoint key: module, optimizer or
    scheduler}) and this rank's RNG state. A checkpoint of another config is one UserError. This
    run's train_param (`tcfg`) applies from here: a new learning_rate, epochs or warmup_steps puts
    the LR schedule (now `total_steps` long) on the new values, said in one line; a change that
    cannot apply (FIXED_ON_RESUME) is refused, and so is a run with no step left before `stop_at`.
    Changed model_param values (`cfg`: changed_model_keys) are said too."""
    changes = reconcile_train_param(state, source, tcfg) + changed_model_keys(state, cfg)
    step = state["step"]
    if step >= stop_at:
        raise UserError(f"{source} is at step {step} and this run stops at step {stop_at} ({tcfg['epochs']} epochs "
                        f"= {total_steps} steps, or --max-steps): nothing to do. Pass a larger --epochs (or "
                        "--max-steps) to train longer")
    try:
        for key, part in parts.items():
            part.load_state_dict(state[key])
    except KeyError as err:
        raise UserError(f"{source} is not a checkpoint of this script (no {err} entry)") from None
    except (RuntimeError, ValueError) as err:
        raise UserError(f"{source} does not match {config}: {' '.join(str(err).split())[:300]}") from None
    restore_rng_state(state["rng"], rank, device)
    old_lr = state.get("train_param", {}).get("learning_rate", tcfg["learning_rate"])
    lrs = reschedule(parts, old_lr, tcfg["learning_rate"])
    if lrs:
        changes.append(f"the LR schedule spans {total_steps} steps and its learning rate at step {step} is "
                       f"{lrs[0][1]:.3g} (was {lrs[0][0]:.3g})")
    if rank == 0 and changes:
        print(f"resuming with changes: {'; '.join(changes)}")


def run_state(parts: dict[str, Stateful], world: int, run_dir: Path, *, device: torch.device | None = None,
              **extra: object) -> dict:
    """A resumable checkpoint: every part's state, every rank's RNG states (rng_state of its
    `device`) and `extra`. Weights or
    optimizer state with a NaN or inf stop the run (a UserError), so that no save overwrites
    RUN_DIR/last.pt with them. A collective under DDP: every rank calls it, rank 0 saves it."""
    state = {key: part.state_dict() for key, part in parts.items()}
    bad = first_nonfinite(state)
    if bad:
        raise UserError(f"{bad} is NaN or infinite at step {extra.get('step')}; stopping without saving. "
                        + restart_hint(run_dir / "last.pt"))
    return {**state, "rng": gather_per_rank(rng_state(device), world), **extra}


def resume_only(parts: dict[str, Stateful]) -> list[str]:
    """The checkpoint keys only a resume needs (optimizer and schedule state, the RNG states): what
    best.pt, the best weights and their record, leaves out (the optimizer alone is twice the weights)."""
    return [key for key, part in parts.items() if not isinstance(part, nn.Module)] + ["rng"]


def save_run(run_dir: Path, state: dict, weights: tuple[str, nn.Module], improved: bool,
             snapshot: str | None = None, resume_keys: Sequence[str] = ()) -> None:
    """Write, when the run `improved`, best.pt (`state` without `resume_keys`, see resume_only) and
    the plain weights (`weights` is (file name, module)); the extra, resumable `snapshot` file when
    given; then last.pt. Rank 0 only. last.pt comes last, so a kill between the writes leaves the
    previous last.pt, which never claims a best that was not written; resume_source rewrites plain
    weights left older than best.pt."""
    if improved:
        save_checkpoint({k: v for k, v in state.items() if k not in resume_keys}, run_dir / "best.pt")
        save_checkpoint(weights[1].state_dict(), run_dir / weights[0])
    if snapshot:
        save_checkpoint(state, run_dir / snapshot)
    save_checkpoint(state, run_dir / "last.pt")


def weights_note(run_dir: Path, name: str) -> str:
    """Where a finished run's weights are, naming only files that exist."""
    if (run_dir / name).is_file():
        return f"weights in {run_dir / name}"
    if (run_dir / "last.pt").is_file():
        return f"no validation improved, so no {name} was written; the latest weights are in {run_dir / 'last.pt'}"
    return "no checkpoint was written"


def best_checkpoint(run_dir: str | os.PathLike, key: str) -> dict:
    """RUN_DIR/best.pt, which must hold the `key` weights."""
    return load_checkpoint(Path(run_dir) / "best.pt", keys=(key,))


def check_export(args: argparse.Namespace, kind: str, *inputs: str | os.PathLike | None) -> str:
    """--export DEST, before anything is read: not one of the run's inputs (its folder, config, data
    and `inputs`) and, when it exists, this run's earlier `kind` export (or --overwrite).
    Returns the origin the export records."""
    origin = export_origin(args.run_dir)
    check_export_destination(args.export, "--export", kind, origin,
                             [args.run_dir, args.config, *args.train_path, args.val_path, *inputs], args.overwrite)
    return origin


def export(module: nn.Module, checkpoint: dict, key: str, dest: str | os.PathLike, kind: str, config: dict,
           train_paths: Sequence[str | os.PathLike], origin: str, **facts: object) -> None:
    """Write the `key` weights of a run's best checkpoint, loaded into `module`, as an exported
    folder at `dest` (float16 safetensors + config.json, models/pretrained.py) with the config, the
    run's step and train_param, the training data's credits (the CREDITS.md beside each training
    folder of the run, when there; the checkpoint records them, `train_paths` stands in for runs
    older than that) and `facts`."""
    load_state(module, checkpoint[key], f"best.pt ({key})")
    train_paths = checkpoint.get("train_path", train_paths)
    run = {k: checkpoint[k] for k in ("step", "best_val_loss", "best_psnr", "best", "train_param") if k in checkpoint}
    credits = [c.read_text() for c in (Path(p).parent / "CREDITS.md" for p in train_paths) if c.is_file()]
    data = {"train_path": " ".join(map(str, train_paths)), **({"credits": "\n\n".join(credits)} if credits else {})}
    write_exported(dest, kind, module, config, origin, run=run, data=data, **facts)
    print(f"wrote {dest}")


# ----------------------------------------------------------------------------- logging

class RunLog:
    """Appends one JSON object per line to `log.jsonl` in the run folder (rank 0 only) and keeps the
    records in memory for plotting."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(run_dir) / "log.jsonl"
        self.enabled = enabled
        self.records: list[dict] = []
        if enabled and self.path.exists():
            self.records = self._read()

    def _read(self) -> list[dict]:
        """The file's records. A last line that is not a JSON object (cut short by a kill) is dropped
        with a warning; such a line elsewhere is a UserError (the file is left as it is)."""
        lines = [(n, line) for n, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1)
                 if line.strip()]
        records = []
        for i, (number, line) in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif i == len(lines) - 1:
                print(f"warning: dropped the last line of {self.path}, cut short by an interrupted write",
                      file=sys.stderr)
            else:
                raise UserError(f"{self.path} line {number} is not a JSON record: repair or remove that line, or "
                                "move the file away (checkpoints do not need it)")
        return records

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
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
