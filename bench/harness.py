"""Shared pieces of the speed benchmarks: a long-lived child process per variant (so that peak RSS
is the variant's own), interleaved repetitions, timing, peak memory, the machine's description,
the speed-up and memory tables, and the blocks of BENCHMARKS.md that a `--write` replaces.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
VARIANTS = ("lab-style", "project")  # the baseline written in each benchmark, and this project's code
READY = "BENCH_READY"
RESULT = "BENCH_RESULT "


# ----------------------------------------------------------------------------- child processes

class Child:
    """One variant's process: started once (imports, model, data and warm-up are paid once), then
    asked for one measured run at a time, so that the variants can alternate; its peak RSS is the
    variant's own. The child side is serve()."""

    def __init__(self, script: str | os.PathLike, args: Sequence[str]):
        module = ".".join(Path(script).resolve().relative_to(REPO_ROOT).with_suffix("").parts)
        self.command = [sys.executable, "-m", module, *args]  # from the repository root, as the bench was run
        self.proc = subprocess.Popen(self.command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def _read(self, prefix: str) -> str:
        """The rest of the child's next stdout line that starts with `prefix`."""
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
        raise RuntimeError(f"benchmark child failed (exit {self.proc.wait()}): {' '.join(self.command)}")

    def wait_ready(self) -> None:
        self._read(READY)

    def measure(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return json.loads(self._read(RESULT))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


@contextmanager
def start_children(script: str | os.PathLike, args: dict[str, Sequence[str]]) -> Iterator[dict[str, Child]]:
    """A Child per variant ({variant: its arguments}), started together; yields once all are ready
    (set up and warmed up), so that no start-up overlaps a measurement."""
    children = {variant: Child(script, child_args) for variant, child_args in args.items()}
    try:
        for child in children.values():
            child.wait_ready()
        yield children
    finally:
        for child in children.values():
            child.close()


def serve(measure: Callable[[], dict]) -> None:
    """Child side: say ready, then for every line read from stdin make one measured run and report
    its result (a tagged JSON line on stdout) until stdin closes."""
    print(READY, flush=True)
    for _ in sys.stdin:
        print(RESULT + json.dumps(measure()), flush=True)


def interleave(repeats: int, variants: Sequence[str], run: Callable[[str], dict]) -> dict[str, list[dict]]:
    """Run every variant `repeats` times, alternating the order (A B, B A, ...) so that a slow
    stretch of the machine falls on both. Returns {variant: [result per repetition]}."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        for variant in variants if r % 2 == 0 else list(reversed(variants)):
            print(f"  repetition {r + 1}/{repeats}: {variant} ...", file=sys.stderr, flush=True)
            results[variant].append(run(variant))
    return results


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


@contextmanager
def stopwatch(device: torch.device) -> Iterator[dict[str, float]]:
    """Times the block: yields a dict that gets `seconds` (wall clock) and `cpu_seconds` (CPU time
    of this process, all its threads), with the device's queued work finished on both sides."""
    times: dict[str, float] = {}
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield times
    synchronize(device)
    times.update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)


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
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
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


def speedup_text(results: dict[str, list[dict]], device: torch.device, goal: float | None) -> str:
    """The lab-style / project ratio of the wall-clock `seconds` of each repetition (the two were
    measured side by side), its median against the goal, and on the CPU the same by CPU time."""
    def ratios(key: str) -> list[float]:
        return [b[key] / p[key] for b, p in zip(results["lab-style"], results["project"], strict=True)]

    wall = ratios("seconds")
    where = device.type.upper()
    text = (f"Speed-up, lab-style time / project time, median of {len(wall)} paired ratios: "
            f"**{median(wall):.2f}x** (runs: {', '.join(f'{x:.2f}' for x in wall)}); ")
    text += (f"goal on {where}: at least {goal:g}x, {'met' if median(wall) >= goal else 'missed'}." if goal
             else f"no goal set on {where}.")
    if device.type == "cpu":
        cpu = ratios("cpu_seconds")
        text += (f" The same by CPU time of each variant's process (less sensitive to other load on the "
                 f"machine): {median(cpu):.2f}x (runs: {', '.join(f'{x:.2f}' for x in cpu)}).")
    return text


def memory_table(results: dict[str, list[dict]], device: torch.device) -> str:
    """Peak RSS per variant (and GPU max allocated on CUDA), the largest its process reported."""
    headers = ["variant", "peak RSS (MiB)"] + (["GPU max allocated (MiB)"] if device.type == "cuda" else [])
    rows = [[v, f"{max(r['rss_mib'] for r in runs):.0f}"]
            + ([f"{max(r['gpu_mib'] for r in runs):.0f}"] if device.type == "cuda" else [])
            for v, runs in results.items()]
    return markdown_table(headers, rows)


def check_same_weights(results: dict[str, list[dict]]) -> None:
    if len({r["fingerprint"] for runs in results.values() for r in runs}) != 1:
        raise RuntimeError("the variants were not given the same weights")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def update_section(section: str, key: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `body` into BENCHMARKS.md under `## {section}`, between markers named after `key` and the
    section: the block of the same key (say the same device and config) is replaced; a new one goes
    after the section's last block (or at its end); any other text is kept. A missing section is
    added at the end of the file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    marker = f"{key} | {section}"
    block = f"<!-- {marker} -->\n{body.strip()}\n<!-- /{marker} -->"
    existing = re.compile(rf"<!-- {re.escape(marker)} -->\n.*?<!-- /{re.escape(marker)} -->", re.S)
    heading = re.search(rf"^## {re.escape(section)}[ \t]*$", text, re.M)
    if existing.search(text):
        text = existing.sub(lambda _: block, text, count=1)
    elif heading is None:
        text = text.rstrip("\n") + f"\n\n## {section}\n\n{block}\n"
    else:
        following = re.search(r"^## ", text[heading.end():], re.M)
        end = heading.end() + following.start() if following else len(text)
        blocks = list(re.finditer(r"<!-- /[^>]*-->", text[heading.end():end]))
        if blocks:
            at = heading.end() + blocks[-1].end()
            text = text[:at] + f"\n\n{block}" + text[at:]
        else:
            text = text[:end].rstrip("\n") + f"\n\n{block}\n" + ("\n" + text[end:] if following else "")
    path.write_text(text)
