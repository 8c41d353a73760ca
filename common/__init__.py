"""Shared plumbing for every script, one module per job: errors, cli (the runner and the flags'
spellings), checks (numbers, paths to read, folders and destinations to write), paths, devices,
progress bars, files (atomic writes, digests, CSV) and checkpoints. The training-only half (RNG
state, distributed set-up, LR schedule, run log, sampler) is in training/engine.py. Nothing here
imports the models."""
from common.checkpoints import (
    WEIGHTS_FILE,
    extract_state_dict,
    half_state_dict,
    load_checkpoint,
    load_state,
    load_weights,
    read_safetensors,
    read_weights,
    save_checkpoint,
)
from common.checks import (
    SEED_MAX,
    check_destination,
    check_minimum,
    check_number,
    check_output_dir,
    check_readable,
    check_seed,
    check_writable,
)
from common.cli import LAB_SPELLINGS, ArgumentParser, run_cli, spelled
from common.devices import DEFAULT_NUM_WORKERS, autocast, native_bf16, numerics, resolve_device, seed_everything
from common.errors import UserError
from common.files import TEMP_NAME, atomic_write, file_sha256, remove_orphaned_temp_files, write_csv
from common.paths import REPO_ROOT, resolve_path
from common.progress import progress_bar

__all__ = [
    "DEFAULT_NUM_WORKERS",
    "LAB_SPELLINGS",
    "REPO_ROOT",
    "SEED_MAX",
    "TEMP_NAME",
    "WEIGHTS_FILE",
    "ArgumentParser",
    "UserError",
    "atomic_write",
    "autocast",
    "check_destination",
    "check_minimum",
    "check_number",
    "check_output_dir",
    "check_readable",
    "check_seed",
    "check_writable",
    "extract_state_dict",
    "file_sha256",
    "half_state_dict",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "native_bf16",
    "progress_bar",
    "numerics",
    "read_safetensors",
    "read_weights",
    "remove_orphaned_temp_files",
    "resolve_device",
    "resolve_path",
    "run_cli",
    "save_checkpoint",
    "seed_everything",
    "spelled",
    "write_csv",
]
