"""The first run on a CUDA machine, in one command of at most about 8 minutes: every CUDA path of
the project once (training of both stages with resume, --compile and the lab config, multi-step
dead-code re-init, inpainting in fp32 and bf16 against the CPU, FID against the CPU), then the
BENCHMARKS.md benchmarks, trimmed to the time left.

    python bench/gpu_check.py OUT                                       # on the GPU machine
    python bench/gpu_check.py OUT --device cpu --smoke --budget 900     # the plumbing, on a CPU

Each step runs the project's own commands in child processes; OUT gets three files: gpu_check.log
(every command and its output), summary.md (each step's outcome, time and figures) and
BENCHMARKS.md with the blocks the benchmarks wrote (--write), to be copied over the repo's. Run
folders, caches and images go to --work (default: a new temporary folder). It installs nothing
and needs no network: it runs under whatever Python and torch the machine has, with the data built
on another machine and carried with the repo: datasets/twemoji (train, val, masked_image, mask64,
test_gt.csv) beside the tracked checkpoints/. --smoke runs every step on a few images with a few
steps (and skips --compile and the benchmarks' --write), to check the plumbing without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "twemoji"
PY = sys.executable

MAKE_LAB_VQGAN = """
import sys, torch
from models import VQGAN
from models.config import load_vqgan_config
torch.manual_seed(0)
torch.save(VQGAN(load_vqgan_config("configs/VQGAN.yml")).state_dict(), {path!r})  # the lab's format
"""

FID_ON_DEVICES = """
import json, sys, time
import numpy as np, torch
from PIL import Image
from fid import compute_statistics, frechet_distance, open_images
from fid.inception import FIDInceptionV3
files = sorted(__import__("pathlib").Path({predicted!r}).glob("*.png"))[:{n}]
predicted = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
truth = np.asarray(open_images({gt!r}))[:{n}]
model = FIDInceptionV3().eval().requires_grad_(False)  # random weights: the numerics, not the score
gen, state = torch.Generator().manual_seed(0), model.state_dict()
for key, value in state.items():  # He-initialised convolutions and varied norms keep the features apart
    if key.endswith("conv.weight"):
        state[key] = torch.randn(value.shape, generator=gen) * (2 / value[0].numel()) ** 0.5
    elif key.endswith(("bn.bias", "running_mean", "fc.weight", "fc.bias")):
        state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    elif key.endswith(("bn.weight", "running_var")):
        state[key] = 1 + 0.1 * torch.rand(value.shape, generator=gen)
model.load_state_dict(state)
result = {{}}
for device in {devices!r}:
    start = time.perf_counter()
    model = model.to(device)
    stats = [compute_statistics(images, model, batch_size=50, progress=False) for images in (predicted, truth)]
    result[device] = {{"fid": float(frechet_distance(*stats[0], *stats[1], device)),
                      "mu_max_abs_diff_vs_first": None, "seconds": round(time.perf_counter() - start, 1)}}
    result[device]["mu"] = stats[0][0]
first = next(iter(result.values()))["mu"]
for r in result.values():
    r["mu_max_abs_diff_vs_first"] = float(np.abs(r.pop("mu") - first).max())
print("FID " + json.dumps(result))
"""


class Check:
    """Runs the steps, each under a share of the time budget, and keeps the summary."""

    def __init__(self, out: Path, work: Path, budget: float):
        self.out, self.work, self.deadline, self.rows, self.count = out, work, time.monotonic() + budget, [], 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], limit: float) -> tuple[int, str]:
        """One command, logged to WORK/NN-name.log and OUT/gpu_check.log, killed after `limit` seconds
        (or at the budget's end). Returns (exit code, 124 when killed; its output)."""
        self.count += 1
        log = self.work / f"{self.count:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.log"
        limit = max(1.0, min(limit, self.left()))
        start = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        text = log.read_text(errors="replace")
        with open(self.out / "gpu_check.log", "a") as f:
            f.write(f"\n===== {name} (exit {rc}, {time.monotonic() - start:.0f} s)\n{text}")
        print(f"    exit {rc} after {time.monotonic() - start:.0f} s; log {log.name}", flush=True)
        return rc, text

    def record(self, step: str, ok: bool | None, seconds: float, figures: str) -> None:
        status = "skipped" if ok is None else "ok" if ok else "FAILED"
        self.rows.append((step, status, f"{seconds:.0f}", figures))
        print(f"==> {step}: {status}. {figures}", flush=True)

    def write_summary(self, header: str) -> None:
        lines = [header, "", "| step | result | seconds | figures |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


def done_steps(text: str) -> int | None:
    found = re.findall(r"^done: (\d+) steps", text, re.M)
    return int(found[-1]) if found else None


def log_records(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def subset(folder: Path, count: int | None, dest: Path) -> Path:
    """`folder`, or a folder of links to its first `count` images (for --smoke)."""
    if count is None:
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))[:count]:
        if not (dest / f.name).exists():
            (dest / f.name).symlink_to(f.resolve())
    return dest


def stage2(c: Check, args, name: str, config: str, run: Path, steps: tuple[int, ...], *extra: str) -> None:
    """training_transformer.py for steps[0] steps, then --resume to each further count."""
    start = time.monotonic()
    base = [PY, "training_transformer.py", "--config", config, "--train-path", str(args.train),
            "--val-path", str(args.val), "--checkpoint-path", str(run), "--cache-dir", str(c.work / "runs" / "cache"),
            "--device", args.device, "--num-workers", str(args.workers), "--val-inpaint", str(args.val_inpaint),
            "--log-every", "5", *(["--batch-size", "4"] if args.smoke else []), *extra]
    ok, notes = True, []
    for i, n in enumerate(steps):
        rc, text = c.run(f"{name} to step {n}", base + ["--max-steps", str(n)] + (["--resume"] if i else []),
                         args.step_limit)
        got = done_steps(text)
        ok &= rc == 0 and got == n and (i == 0 or f"at step {steps[i - 1]}" in text)
        notes.append(f"exit {rc}, {got} steps")
        val = [r for r in log_records(run) if "val_loss" in r]
        if val:
            notes[-1] += f", val loss {val[-1]['val_loss']:.4f}"
    c.record(name, ok, time.monotonic() - start, "; ".join(notes))


def stage1(c: Check, args, steps: int, every: int) -> None:
    start = time.monotonic()
    config = c.work / "vqgan_small_reinit.yml"
    text = (ROOT / "configs/small/VQGAN.yml").read_text()
    config.write_text(re.sub(r"reinit_every: \d+", f"reinit_every: {every}", text))
    run = c.work / "runs" / "stage1"
    cmd = [PY, "training_vqgan.py", "--config", str(config), "--train-path", str(args.train), "--val-path",
           str(args.val), "--run-dir", str(run), "--device", args.device, "--num-workers", str(args.workers),
           "--max-steps", str(steps), "--log-every", "1", *(["--batch-size", "4"] if args.smoke else [])]
    rc, out = c.run("stage 1", cmd, args.step_limit)
    renewed = {r["step"]: r["reinit_codes"] for r in log_records(run) if r.get("reinit_codes")}
    psnr = [r["val_psnr"] for r in log_records(run) if "val_psnr" in r]
    ok = rc == 0 and done_steps(out) == steps
    c.record(f"stage 1, small config, reinit_every {every}, {steps} steps", ok, time.monotonic() - start,
             f"exit {rc}; codes renewed at steps {renewed or 'none'}; val PSNR {psnr[-1] if psnr else '-'}")


def inpainting(c: Check, args) -> Path | None:
    """inpainting.py on the CPU (fp32) and on the device (fp32, bf16); returns the device fp32 output."""
    start = time.monotonic()
    results, outputs = {}, {}
    runs = {"CPU fp32": ("cpu", "fp32"), f"{args.device} fp32": (args.device, "fp32"),
            f"{args.device} bf16": (args.device, "bf16")}
    for i, (label, (device, precision)) in enumerate(runs.items()):
        out = c.work / f"inpaint-{i}-{device.replace(':', '')}-{precision}"
        cmd = [PY, "inpainting.py", "--device", device, "--precision", precision, "--output-dir", str(out),
               "--no-progress", "--num_workers", str(args.workers), *(["--partial", "0.02"] if args.smoke else [])]
        rc, _ = c.run(f"inpainting {label}", cmd, args.step_limit)
        metrics = out / "metrics.json"
        if rc == 0 and metrics.is_file():
            m = json.loads(metrics.read_text())
            results[label] = {k: m.get(k) for k in ("psnr_hole", "ssim", "l1_hole", "masked_token_accuracy",
                                                    "images", "seconds")}
        outputs[label] = out
    figures = "; ".join(f"{label}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in r.items()) for label, r in results.items())
    ok = len(results) == len(runs)
    cpu, dev = results.get("CPU fp32"), results.get(f"{args.device} fp32")
    if ok and abs(cpu["psnr_hole"] - dev["psnr_hole"]) > 0.2:  # fp32 on both: TF32 and kernel order only
        figures += "; fp32 device and CPU differ by more than 0.2 dB"
        ok = False
    c.record("inpainting.py, CPU fp32 vs device fp32 and bf16", ok, time.monotonic() - start, figures)
    return outputs.get(f"{args.device} fp32") if ok else None


def fid(c: Check, args, predicted: Path | None) -> None:
    start = time.monotonic()
    if predicted is None:
        c.record("FID, device vs CPU", None, 0, "no inpainting output to score")
        return
    n = 8 if args.smoke else 100
    code = FID_ON_DEVICES.format(root=str(ROOT), predicted=str(predicted / "test_results"), n=n,
                                 gt=str(DATA / "test_gt.csv"), devices=["cpu", args.device])
    rc, text = c.run("FID", [PY, "-c", code], args.step_limit)
    found = re.findall(r"^FID (.*)$", text, re.M)
    figures = found[-1] if found else f"exit {rc}"
    ok = rc == 0 and bool(found)
    if ok:
        values = [r["fid"] for r in json.loads(found[-1]).values()]
        ok = abs(values[0] - values[-1]) <= 1e-3 * max(1.0, abs(values[0]))
    c.record(f"FID, random weights, {n} images, CPU vs {args.device}", ok, time.monotonic() - start, figures)


def benchmarks(c: Check, args) -> None:
    """BENCHMARKS.md's CUDA commands, trimmed, in order of what they tell, while time is left."""
    lab, small = "configs/MaskGit.yml", "configs/small/MaskGit.yml"
    if args.smoke:  # the plumbing only: tiny sizes, and the CPU blocks of BENCHMARKS.md are left alone
        plan = [("inpainting", small, ["--images", "2", "--batch-size", "2", "--repeats", "1", "--threads", "1"], 300),
                ("training", small, ["--steps", "1", "--batch-size", "2", "--repeats", "1", "--threads", "1"], 300)]
    else:
        plan = [("inpainting", lab, ["--repeats", "2", "--write"], 150),
                ("training", lab, ["--steps", "10", "--repeats", "2", "--write"], 120),
                ("inpainting", small, ["--repeats", "2", "--write"], 90),
                ("training", small, ["--steps", "10", "--repeats", "2", "--write"], 90)]
    for kind, config, extra, limit in plan:
        name = f"bench_{kind} {config}"
        if c.left() < min(limit, 60):
            c.record(name, None, 0, f"{c.left():.0f} s of the budget left")
            continue
        start = time.monotonic()
        rc, text = c.run(name, [PY, "-m", f"bench.bench_{kind}", "--device", args.device, "--config", config, *extra],
                         limit)
        speedups = re.findall(r"Speed-up[^*]*\*\*([0-9.]+x)\*\*", text)
        c.record(name, rc == 0, time.monotonic() - start, f"exit {rc}; speed-up {', '.join(speedups) or '-'}")


def environment(c: Check, args) -> str:
    code = ("import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',"
            " torch.version.cuda); d = torch.cuda.is_available() and torch.cuda.get_device_name();"
            " print('device', d or 'none', '| capability', torch.cuda.is_available() and"
            " torch.cuda.get_device_capability(), '| native bf16', torch.cuda.is_available() and"
            " torch.cuda.is_bf16_supported(including_emulation=False))")
    _, text = c.run("environment", [PY, "-c", code], 60)
    if shutil.which("nvidia-smi"):
        c.run("nvidia-smi", ["nvidia-smi"], 30)
    return " ".join(line for line in text.splitlines()[1:] if line.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder for gpu_check.log, summary.md and BENCHMARKS.md (created)")
    p.add_argument("--work", type=Path, default=None, help="folder for runs and outputs (default: a temporary one)")
    p.add_argument("--device", default="cuda", help="the device under test (default: %(default)s)")
    p.add_argument("--budget", type=float, default=480, help="seconds for everything (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="a few images and steps: check the plumbing, on any device")
    p.add_argument("--workers", type=int, default=4, help="image loader workers (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (DATA / "train").is_dir() or not (DATA / "test_gt.csv").is_file():
        print(f"error: {DATA} is missing: build the datasets (see README.md) and carry datasets/twemoji with the repo",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.log").unlink(missing_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    c = Check(args.out, work, args.budget)
    n = 16 if args.smoke else None
    args.train = subset(DATA / "train", n, work / "data" / "train")
    args.val = subset(DATA / "val", n and 8, work / "data" / "val")
    args.val_inpaint = 4 if args.smoke else 16
    args.step_limit = 600 if args.smoke else 150
    runs = work / "runs"
    if runs.exists():
        shutil.rmtree(runs)  # this script's own runs of an earlier call: a run folder must start empty
    env = environment(c, args)

    small, lab = "configs/small/MaskGit.yml", "configs/MaskGit.yml"
    stage2(c, args, "stage 2, small config, 20 steps then --resume to 30", small, runs / "small",
           (2, 3) if args.smoke else (20, 30))
    if args.smoke:
        c.record("stage 2, small config, --compile", None, 0, "skipped with --smoke")
    else:
        stage2(c, args, "stage 2, small config, --compile, 20 then --resume to 30", small, runs / "compile",
               (20, 30), "--compile")
    vqgan = work / "lab_vqgan.pt"
    c.run("random lab-format VQGAN", [PY, "-c", MAKE_LAB_VQGAN.format(root=str(ROOT), path=str(vqgan))], 120)
    stage2(c, args, "stage 2, lab config, random VQGAN, batch 64, 10 steps", lab, runs / "lab", (1,) if args.smoke
           else (10,), "--vqgan-ckpt", str(vqgan), "--batch-size", "2" if args.smoke else "64")
    stage1(c, args, 6 if args.smoke else 12, 5)
    fid(c, args, inpainting(c, args))
    benchmarks(c, args)
    if (ROOT / "BENCHMARKS.md").is_file():
        shutil.copy(ROOT / "BENCHMARKS.md", args.out / "BENCHMARKS.md")
    c.write_summary(f"# gpu_check on {args.device}{' (--smoke)' if args.smoke else ''}\n\n{env}")
    failed = [row[0] for row in c.rows if row[1] == "FAILED"]
    verdict = f"FAILED: {'; '.join(failed)}" if failed else "no failures"
    print(f"summary: {args.out / 'summary.md'}; work folder {work}; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
