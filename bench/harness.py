"""Shared pieces of the speed benchmarks: one child process per measured run (so that peak RSS is
per variant), interleaved repetitions, timing, peak memory, the machine's description, and the
blocks of BENCHMARKS.md that a `--write` replaces.

(Named harness.py rather than common.py so that it never shadows the repository's common.py.)
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
RESULT_PREFIX = "BENCH_RESULT "


# ----------------------------------------------------------------------------- child processes

def run_child(script: str | os.PathLike, args: Sequence[str]) -> dict:
    """Run `script` with `args` in a fresh Python process and return the dict it reported with
    report_result(). The child's other output goes to this process's stderr."""
    command = [sys.executable, str(script), *args]
    proc = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {' '.join(command)}")
    return json.loads(results[-1])


def report_result(result: dict) -> None:
    """Hand a child's result to the parent (one tagged JSON line on stdout)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def interleave(repeats: int, variants: Sequence[str], run: Callable[[str], dict]) -> dict[str, list[dict]]:
    """Run every variant `repeats` times, alternating the order (A B, B A, ...) so that a slow
    stretch of the machine falls on both. Returns {variant: [result per repetition]}."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        for variant in variants if r % 2 == 0 else list(reversed(variants)):
            print(f"  repetition {r + 1}/{repeats}: {variant} ...", file=sys.stderr, flush=True)
            results[variant].append(run(variant))
    return results


def paired_ratios(slow: list[float], fast: list[float]) -> list[float]:
    """Per-repetition ratios slow/fast of two variants' times measured side by side."""
    return [s / f for s, f in zip(slow, fast, strict=True)]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ----------------------------------------------------------------------------- measuring

def set_threads(threads: int) -> None:
    """Intra-op CPU threads for this process (0: torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(wall-clock seconds, return value) of fn(), with the device's queued work finished on both sides."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def peak_memory(device: torch.device) -> dict:
    """This process's peak RSS (MiB) and, on CUDA, the peak of memory allocated by torch (MiB)."""
    memory = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.type == "cuda":
        memory["gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return memory


def weights_fingerprint(module: torch.nn.Module) -> float:
    """Sum of all parameters and buffers: equal in two processes means the same seeded weights."""
    return float(sum(t.double().sum().item() for t in module.state_dict().values() if t.is_floating_point()))


def profile_table(fn: Callable[[], object], device: torch.device, rows: int = 15) -> str:
    """torch.profiler's top operators of one call of fn(), by self time on the device that ran them."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=50)


# ----------------------------------------------------------------------------- reporting

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: torch.device, threads: int) -> str:
    """One line: CPU model and cores, threads, GPU, torch and Python versions, load average."""
    cpu = f"{cpu_model()}, {os.cpu_count()} cores, {threads or torch.get_num_threads()} torch thread(s)"
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{cpu}{gpu}; torch {torch.__version__}, Python {platform.python_version()}; "
            f"load average (1, 5, 15 min) at the start: {load}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def update_section(section: str, key: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `body` into BENCHMARKS.md under `## {section}`, between the markers of `key`: a block
    with the same key (say the same device and config) is replaced, any other text is kept. A
    missing section is added at the end of the file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"<!-- {key} -->\n{body.strip()}\n<!-- /{key} -->"
    existing = re.compile(rf"<!-- {re.escape(key)} -->\n.*?<!-- /{re.escape(key)} -->", re.S)
    heading = re.search(rf"^## {re.escape(section)}[ \t]*$", text, re.M)
    if existing.search(text):
        text = existing.sub(lambda _: block, text, count=1)
    elif heading is None:
        text = text.rstrip("\n") + f"\n\n## {section}\n\n{block}\n"
    else:
        following = re.search(r"^## ", text[heading.end():], re.M)
        end = heading.end() + following.start() if following else len(text)
        text = text[:end].rstrip("\n") + f"\n\n{block}\n" + ("\n" + text[end:] if following else "")
    path.write_text(text)
