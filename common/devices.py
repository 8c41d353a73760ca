"""Devices, bf16 where it is native, autocast, the numerics that go into cache keys, seeding and the
loader-worker default."""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

from common.errors import UserError

DEFAULT_NUM_WORKERS = min(4, (os.cpu_count() or 2) // 2)  # image loader processes of inference and FID


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
