"""Bad input for every CLI, as a matrix: each case must end in exit code 2 with one line on stderr
that names the offending flag or file, no traceback, and every file of the user's left byte for byte
as it was (nothing deleted, nothing overwritten, nothing added). Then the cases where the right
answer is a correct result rather than an error (16-bit PNGs, stale outputs, pairing by name,
reusing a dataset), and a kill during a checkpoint write.

A new flag or script gets a row in CASES."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_inpainting import one_thread, write_configs, write_dataset  # noqa: F401 (an autouse fixture)
from tiny_configs import TINY_VQGAN

import data.masks
import data.prepare
import fid.fid_score_gpu as fid_cli
from common import (
    SEED_MAX,
    UserError,
    check_destination,
    check_output_dir,
    check_readable,
    check_writable,
    load_checkpoint,
    remove_orphaned_temp_files,
    run_cli,
    save_checkpoint,
)
from data import InpaintingDataset, load_ground_truth, read_image
from data.prepare import prepare_dataset
from fid import open_images
from maskgit_inpaint import cli as inpainting_cli
from maskgit_inpaint import compare_runs, inpaint, sweep
from models import MaskGit
from models import convert as convert_weights
from models.convert import convert
from training import transformer as stage2
from training import vqgan as stage1

ROOT = Path(__file__).resolve().parents[1]
COUNT = 4  # images in the tiny test set


def save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Everything the cases read, under one folder whose bytes must never change."""
    root = tmp_path_factory.mktemp("user")
    write_configs(root / "model")
    write_dataset(root / "data", COUNT)
    state = torch.load(root / "model" / "transformer.pt", weights_only=True)["model"]
    (root / "model" / "empty.pt").write_bytes(b"")
    save_checkpoint([1, 2, 3], root / "model" / "list.pt")
    state = {k: v.clone() for k, v in state.items()}
    next(v for v in state.values() if v.is_floating_point())[0] = float("nan")
    save_checkpoint({"model": state}, root / "model" / "nan.pt")
    # an earlier run's output folder, its test_results/ now used as input
    for sub in ("test_results", "mask64"):
        src = root / "data" / ("masked_image" if sub == "test_results" else "mask64")
        for i, f in enumerate(sorted(src.iterdir())):
            save_png(np.asarray(Image.open(f)), root / "prev" / sub / f"image_{i:03d}.png")
    (root / "a_file.txt").write_text("not a folder")
    rng = np.random.default_rng(0)
    for i in range(3):
        save_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), root / "fid_good" / f"{i}.png")
        save_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), root / "fid_damaged" / f"{i}.png")
    whole = (root / "fid_damaged" / "2.png").read_bytes()
    (root / "fid_damaged" / "2.png").write_bytes(whole[: len(whole) // 2])
    for i in range(3):
        save_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), root / "images" / f"pic{i}.png")
    for stem in ("1f600", "1f601", "1f602", "1f603", "1f604", "1f605"):
        save_png(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), root / "src" / f"{stem}.png")
    prepare_dataset(root / "built", root / "src", progress=False)
    (root / "built" / "my_notes.txt").write_text("added by the user")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep me")
    (root / "vqgan.yml").write_text(TINY_VQGAN + "train_param:\n  batch_size: 2\n  epochs: 1\n")
    save_checkpoint(torch.load(root / "model" / "vqgan.pt", weights_only=True), root / "plain_run" / "last.pt")
    save_checkpoint({"model": state}, root / "plain_run2" / "last.pt")
    # exported folders: a VQGAN and a transformer trained on it
    convert("vqgan", root / "model" / "vqgan.pt", root / "model" / "VQGAN.yml", root / "vq_export")
    convert("maskgit", root / "model" / "transformer.pt", root / "model" / "MaskGit.yml", root / "tr_export",
            vqgan=root / "vq_export")
    flipped = shutil.copytree(root / "tr_export", root / "tr_flipped")
    weights = bytearray((flipped / "model.safetensors").read_bytes())
    weights[-5] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(weights))
    shutil.copytree(root / "tr_export", root / "tr_noconfig")
    (root / "tr_noconfig" / "config.json").unlink()
    np.savez(root / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(root / "other.npz", weights=np.zeros(3))
    save_png(np.full((16, 16), 255, np.uint8), root / "handmasks" / "pic0.png")  # a mask the user drew
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def inpainting_args(w: Path) -> list[str]:
    return ["--MaskGitConfig", str(w / "model/MaskGit.yml"), "--load-transformer-ckpt-path",
            str(w / "model/transformer.pt"), "--test-maskedimage-path", str(w / "data/masked_image"),
            "--test-mask-path", str(w / "data/mask64"), "--device", "cpu", "--num_workers", "0",
            "--batch-size", "2", "--no-progress"]


# cli: (how to call it, default arguments). Argument lists use "W/" for the world folder and
# "T/" for a scratch folder outside it (caches, outputs of cases that get that far).
CLIS: dict[str, tuple[Callable[[list[str]], object], list[str]]] = {
    "inpainting": (inpainting_cli.main, ["--output-dir", "T/out"]),
    "sweep": (sweep.main, ["--out-dir", "T/sweep", "--total-iters", "2", "--no-fid"]),
    "fid": (fid_cli.main, ["--device", "cpu", "--no-cache"]),
    "masks": (data.masks.main, ["--kind", "box"]),
    "prepare": (data.prepare.main, ["--source", "W/src"]),
    "vqgan": (stage1.main, ["--config", "W/vqgan.yml", "--train-path", "W/data/clean", "--val-path",
                            "W/data/clean", "--device", "cpu", "--num_workers", "0"]),
    "convert": (convert_weights.main, []),
    "compare": (compare_runs.main, ["--runs", "W/prev", "--masked", "W/data/masked_image", "--masks", "W/data/mask64",
                                    "--gt-path", "W/data/test_gt.csv"]),
    "transformer": (stage2.main, [
        "--MaskGitConfig", "W/model/MaskGit.yml", "--train_d_path", "W/data/clean", "--val_d_path", "W/data/clean",
        "--device", "cpu", "--num_workers", "0", "--batch-size", "2", "--cache-dir", "T/cache"]),
}
ARGV_FROM_SYS = {"masks", "prepare", "vqgan", "transformer"}  # main() reads sys.argv

FID_PAIR = ["--predicted-path", "W/fid_good", "--gt-path", "W/fid_good"]  # two readable image folders

# id: (cli, arguments, what the one line must contain)
CASES: dict[str, tuple[str, list[str], str]] = {
    # data loss
    "inpainting/output-dir holds the inputs": (
        "inpainting", ["--test-maskedimage-path", "W/prev/test_results", "--test-mask-path", "W/prev/mask64",
                       "--output-dir", "W/prev"], "--output-dir W/prev overlaps the input W/prev/test_results"),
    "inpainting/output-dir is the input folder": (
        "inpainting", ["--output-dir", "W/data/masked_image"], "overlaps the input W/data/masked_image"),
    "inpainting/image inside the output": (
        "inpainting", ["--image", "W/prev/test_results/image_000.png", "--mask-kind", "box", "--output-dir",
                       "W/prev"], "overlaps the input W/prev/test_results/image_000.png"),
    "inpainting/gt inside the output": (
        "inpainting", ["--gt-path", "W/prev/test_results", "--output-dir", "W/prev"],
        "overlaps the input W/prev/test_results"),
    "sweep/out-dir is the input folder": ("sweep", ["--out-dir", "W/data/masked_image"], "overlaps the input"),
    "masks/out is the image folder": (
        "masks", ["--images", "W/images", "--out", "W/images"], "--out W/images overlaps the input W/images"),
    "masks/masked-out is the image folder": (
        "masks", ["--images", "W/images", "--out", "T/m", "--masked-out", "W/images"],
        "--masked-out W/images overlaps the input"),
    "masks/out and masked-out are one folder": (
        "masks", ["--images", "W/images", "--out", "T/m", "--masked-out", "T/m"], "masked images would overwrite"),
    "prepare/out holds the source": ("prepare", ["--out", "W"], "--out W overlaps the input W/src"),
    "prepare/folder it did not build": ("prepare", ["--out", "W/mine"], "not built by data.prepare"),
    "prepare/rebuild over a user's file": (
        "prepare", ["--out", "W/built", "--seed", "1"], "did not write or that changed since (e.g. my_notes.txt)"),
    **{f"{cli}/export onto {what}": (cli, [*run, "--export", dest], needle) for cli, run, what, dest, needle in (
        ("transformer", ["--checkpoint-path", "T/run", "--vqgan-ckpt", "W/vq_export"], "its own VQGAN",
         "W/vq_export", "--export W/vq_export would replace W/vq_export, an input of this run"),
        ("vqgan", ["--run-dir", "T/run"], "a transformer", "W/tr_export",
         "--export W/tr_export already exists and holds a maskgit model, not a vqgan one; choose another --export, "
         "or pass --overwrite"),
        ("vqgan", ["--run-dir", "T/run"], "another run's VQGAN", "W/vq_export",
         "holds another vqgan model (not an export of this run)"),
        ("vqgan", ["--run-dir", "T/run"], "a user's folder", "W/mine", "exists and is not an exported model folder"),
        ("vqgan", ["--run-dir", "T/run"], "its training data", "W/data/clean", "exists and is not an exported model"),
        ("transformer", ["--checkpoint-path", "T/run"], "its run folder", "T/run", "/run, an input of this run"))},
    "convert/out onto another kind": (
        "convert", ["vqgan", "W/model/vqgan.pt", "--config", "W/model/VQGAN.yml", "--out", "W/tr_export"],
        "--out W/tr_export already exists and holds a maskgit model, not a vqgan one"),
    "convert/out onto its own VQGAN": (
        "convert", ["maskgit", "W/model/transformer.pt", "--config", "W/model/MaskGit.yml", "--vqgan", "W/vq_export",
                    "--out", "W/vq_export"], "--out W/vq_export would replace W/vq_export, an input of this run"),
    "convert/out onto a conversion of another file": (
        "convert", ["vqgan", "W/plain_run/last.pt", "--config", "W/model/VQGAN.yml", "--out", "W/vq_export"],
        "holds another vqgan model (not an export of this file)"),
    "compare/out onto a masked input": (
        "compare", ["--out", "W/data/masked_image/00.png"],
        "--out W/data/masked_image/00.png already exists and is not a figure compare_runs.py wrote"),
    "compare/out onto a run's result": (
        "compare", ["--out", "W/prev/test_results/image_000.png"], "is not a figure compare_runs.py wrote"),
    "fid/save-stats onto the predicted statistics": (
        "fid", ["--predicted-path", "W/stats.npz", "--gt-path", "W/fid_good", "--save-stats", "W/stats.npz"],
        "--save-stats W/stats.npz would replace W/stats.npz, an input of this run"),
    "fid/save-stats onto another npz": ("fid", [*FID_PAIR, "--save-stats", "W/other.npz"],
                                        "--save-stats W/other.npz already exists and holds something other than FID"),
    "masks/out holds a hand-made mask": (
        "masks", ["--images", "W/images", "--out", "W/handmasks"],
        "--out W/handmasks/pic0.png already exists and holds another image"),
    # weights checked on load
    "inpainting/flipped bytes in a model folder": (
        "inpainting", ["--MaskGitConfig", "", "--load-transformer-ckpt-path", "W/tr_flipped"],
        "W/tr_flipped/model.safetensors does not match the digest in its config.json"),
    "inpainting/model folder without config.json": (
        "inpainting", ["--MaskGitConfig", "", "--load-transformer-ckpt-path", "W/tr_noconfig"],
        "W/tr_noconfig is not an exported model folder (no config.json)"),
    "inpainting/total-iter above the token count": (
        "inpainting", ["--total-iter", "17"], "between 1 and 16, got 17"),
    "inpainting/sample-temperature nan": (
        "inpainting", ["--sample-temperature", "nan"], "must be a finite number, got nan"),
    "inpainting/seed beyond 64 bits": (
        "inpainting", ["--random-seed", "99999999999999999999999"], "(seed) must be between 0 and"),
    "transformer/save-per-epoch -1": (
        "transformer", ["--checkpoint-path", "T/run", "--save-per-epoch", "-1"],
        "--save-per-epoch must be at least 0, got -1"),
    **{f"{cli}/random-seed beyond 64 bits": (cli, [run_flag, "T/run", "--random-seed", str(2**64)],
                                             "--random-seed must be between 0 and")
       for cli, run_flag in (("vqgan", "--run-dir"), ("transformer", "--checkpoint-path"))},
    "vqgan/run-dir inside the training images": (
        "vqgan", ["--run-dir", "W/data/clean/run"], "--run-dir W/data/clean/run is inside the image folder"),
    "vqgan/weights without evaluate": (
        "vqgan", ["--run-dir", "T/run", "--weights", "W/model/vqgan.pt"], "--weights goes with --evaluate"),
    "vqgan/fit-known-pixels without export": (
        "vqgan", ["--fit-known-pixels", "5", "--weights", "W/model/vqgan.pt"], "--fit-known-pixels needs --weights"),
    "vqgan/fit-known-pixels 0": (
        "vqgan", ["--fit-known-pixels", "0", "--weights", "W/model/vqgan.pt", "--export", "T/k"],
        "--fit-known-pixels must be at least 1"),
    "vqgan/fit-known-pixels onto its parent": (
        "vqgan", ["--fit-known-pixels", "5", "--weights", "W/vq_export", "--export", "W/vq_export"],
        "an input of this run"),
    "vqgan/fit-known-pixels and refit-codebook": (
        "vqgan", ["--fit-known-pixels", "5", "--refit-codebook", "4", "--weights", "W/model/vqgan.pt"],
        "refit first, then fit the refit"),
    "compare/images 0": ("compare", ["--images", "0", "--out", "T/c.png"], "--images must be at least 1"),
    "compare/images -3": ("compare", ["--images", "-3", "--out", "T/c.png"], "got -3"),
    "compare/out with an unknown suffix": ("compare", ["--out", "T/c.pdf"], "--out must be a .png file or a folder"),
    "compare/out under a file": ("compare", ["--out", "W/a_file.txt/c.png"], "W/a_file.txt is a file, not a folder"),
    "compare/runs is a file": ("compare", ["--runs", "W/a_file.txt", "--out", "T/c.png"],
                               "--runs W/a_file.txt is a file, not a folder"),
    "fid/cache-dir names a file": ("fid", [*FID_PAIR, "--cache-dir", "W/a_file.txt"],
                                   "--cache-dir W/a_file.txt is a file, not a folder"),
    "convert/weights is a folder": (
        "convert", ["vqgan", "W/model", "--config", "W/model/VQGAN.yml", "--out", "T/x"],
        "weights W/model is a folder"),
    # checkpoints
    "inpainting/empty checkpoint": (
        "inpainting", ["--load-transformer-ckpt-path", "W/model/empty.pt"], "W/model/empty.pt is empty (0 bytes)"),
    "inpainting/list checkpoint": (
        "inpainting", ["--load-transformer-ckpt-path", "W/model/list.pt"], "W/model/list.pt holds a list"),
    "inpainting/NaN weights": (
        "inpainting", ["--load-transformer-ckpt-path", "W/model/nan.pt"], "W/model/nan.pt holds NaN or infinite"),
    "sweep/empty checkpoint": ("sweep", ["--load-transformer-ckpt-path", "W/model/empty.pt"], "is empty (0 bytes)"),
    "vqgan/resume from plain weights": (
        "vqgan", ["--run-dir", "W/plain_run", "--resume"], "W/plain_run/last.pt is not a training checkpoint"),
    "transformer/resume from plain weights": (
        "transformer", ["--checkpoint-path", "W/plain_run2", "--resume", "--vqgan-ckpt", "W/model/vqgan.pt"],
        "W/plain_run2/last.pt is not a training checkpoint"),
    # flags
    **{f"{cli}/batch size {n}": (cli, ["--batch-size", n, *extra], f"--batch-size must be at least 1, got {n}")
       for cli, extra in (("inpainting", []), ("sweep", []), ("fid", ["--predicted-path", "W/fid_good",
                                                                      "--gt-path", "W/fid_good"]),
                          ("vqgan", ["--run-dir", "T/run"])) for n in ("0", "-2")},
    **{f"{cli}/num workers -1": (cli, [flag, "-1", *extra], f"{flag} must be at least 0, got -1")
       for cli, flag, extra in (("inpainting", "--num_workers", []), ("sweep", "--num_workers", []),
                                ("fid", "--num-workers", ["--predicted-path", "W/fid_good", "--gt-path", "W/fid_good"]),
                                ("vqgan", "--num_workers", ["--run-dir", "T/run"]),
                                ("transformer", "--num_workers", ["--checkpoint-path", "T/run"]))},
    "vqgan/save every 0": ("vqgan", ["--save-every", "0", "--run-dir", "T/run"], "--save-every must be at least 1"),
    **{f"{cli}/{flag} 0": (cli, [flag, "0", run_flag, "T/run"], f"{flag} must be at least 1, got 0")
       for cli, run_flag in (("vqgan", "--run-dir"), ("transformer", "--checkpoint-path"))
       for flag in ("--epochs", "--max-steps")},
    **{f"{cli}/device mps": (cli, ["--device", "mps", *extra], "unknown device 'mps' (use cpu, cuda or cuda:N)")
       for cli, extra in (("inpainting", []), ("sweep", []),
                          ("fid", ["--predicted-path", "W/fid_good", "--gt-path", "W/fid_good"]),
                          ("vqgan", ["--run-dir", "T/run"]))},
    # paths
    "inpainting/output-dir is a file": ("inpainting", ["--output-dir", "W/a_file.txt"],
                                        "--output-dir W/a_file.txt is a file, not a folder"),
    "inpainting/output-dir under a file": ("inpainting", ["--output-dir", "W/a_file.txt/sub"],
                                           "W/a_file.txt is a file, not a folder"),
    "sweep/out-dir is a file": ("sweep", ["--out-dir", "W/a_file.txt"], "--out-dir W/a_file.txt is a file"),
    "masks/out is a file": ("masks", ["--images", "W/images", "--out", "W/a_file.txt"], "--out W/a_file.txt is a file"),
    "prepare/out is a file": ("prepare", ["--out", "W/a_file.txt"], "--out W/a_file.txt is a file"),
    "vqgan/run-dir is a file": ("vqgan", ["--run-dir", "W/a_file.txt"], "--run-dir W/a_file.txt is a file"),
    "transformer/checkpoint-path is a file": (
        "transformer", ["--checkpoint-path", "W/a_file.txt"], "--checkpoint-path W/a_file.txt is a file"),
    # FID
    "fid/damaged predicted PNG": ("fid", ["--predicted-path", "W/fid_damaged", "--gt-path", "W/fid_good"],
                                  "cannot read image W/fid_damaged/2.png"),
    "fid/damaged ground-truth PNG": ("fid", ["--predicted-path", "W/fid_good", "--gt-path", "W/fid_damaged"],
                                     "cannot read image W/fid_damaged/2.png"),
}


def run_case(cli: str, args: list[str], w: Path, scratch: Path, monkeypatch, capsys) -> tuple[int, str]:
    """Run a CLI in this process as its command line would: (exit code, stderr)."""
    main, defaults = CLIS[cli]
    argv = [a.replace("W/", f"{w}/").replace("T/", f"{scratch}/") for a in [*defaults, *args]]
    argv = [f"{w}" if a == "W" else a for a in argv]
    if cli in ("inpainting", "sweep"):
        argv = inpainting_args(w) + argv
    for flag in [a for a, value in zip(argv, argv[1:]) if value == ""]:  # FLAG "": leave out the default FLAG
        argv = [a for i, a in enumerate(argv) if a != flag and (i == 0 or argv[i - 1] != flag)]
    if cli in ARGV_FROM_SYS:
        monkeypatch.setattr(sys, "argv", [cli, *argv])
        call = main
    else:
        def call():
            return main(argv)
    code = 0
    try:
        run_cli(call)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_the_users_files(case, world, tmp_path, monkeypatch, capsys):
    cli, args, needle = CASES[case]
    if case.endswith("device mps") and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    before = snapshot(world)
    code, err = run_case(cli, args, world, tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()  # progress bars of a case that gets as far as encoding may come first
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
    assert needle.replace("W/", f"{world}/").replace("--out W ", f"--out {world} ") in lines[-1], lines[-1]
    assert snapshot(world) == before  # nothing deleted, changed or added


def test_unwritable_output_dir(world, tmp_path, monkeypatch, capsys):
    """root ignores permissions, so os.access is made to answer as for an unprivileged user."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    for cli, flag in (("inpainting", "--output-dir"), ("sweep", "--out-dir")):
        code, err = run_case(cli, [flag, str(locked / "out")], world, tmp_path, monkeypatch, capsys)
        assert code == 2 and err == f"error: {flag} {locked / 'out'}: {locked} is not writable\n"
    code, err = run_case("masks", ["--images", "W/images", "--out", str(locked)], world, tmp_path, monkeypatch, capsys)
    assert code == 2 and err == f"error: --out {locked}: {locked} is not writable\n"
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("flag, path", [("--test-maskedimage-path", "data/masked_image"),
                                        ("--test-mask-path", "data/mask64"), ("--MaskGitConfig", "model/MaskGit.yml"),
                                        ("--load-transformer-ckpt-path", "model/transformer.pt")])
def test_unreadable_inputs(world, tmp_path, monkeypatch, capsys, flag, path):
    """An input a user may not read: one line naming the flag, before anything is opened or written
    (root ignores permissions, so os.access answers as for an unprivileged user)."""
    locked = world / path
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    for cli in ("inpainting", "sweep"):
        code, err = run_case(cli, [], world, tmp_path, monkeypatch, capsys)
        assert code == 2 and err == f"error: {flag} {locked} is not readable (permission denied)\n", err
    assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir_for_real(world, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = subprocess.run([sys.executable, "inpainting.py", *inpainting_args(world), "--output-dir",
                             str(locked / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.endswith("is not writable\n"), result.stderr


# ----------------------------------------------------------------------------- correct behaviour

def test_16bit_grayscale_is_scaled_not_white(tmp_path):
    values = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    save_png(values, tmp_path / "gray16" / "a.png")
    save_png(values[::-1], tmp_path / "gray16" / "b.png")
    assert Image.open(tmp_path / "gray16" / "a.png").mode in ("I;16", "I")
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "gray16" / "a.png", "L"), expected)
    np.testing.assert_array_equal(read_image(tmp_path / "gray16" / "a.png", "RGB"), np.stack([expected] * 3, -1))
    np.testing.assert_array_equal(load_ground_truth(tmp_path / "gray16")[0, ..., 1], expected)
    images = open_images(tmp_path / "gray16")
    np.testing.assert_array_equal(images[1].numpy()[2], expected[::-1])


def test_rerun_clears_only_its_own_files_and_a_stale_metrics_json(world, tmp_path, capsys):
    out = tmp_path / "out"
    inpainting_cli.main([*inpainting_args(world), "--output-dir", str(out), "--baseline", "mean-fill"])
    assert (out / "metrics.json").is_file() and len(list((out / "test_results").iterdir())) == COUNT
    (out / "test_results" / "image_best.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    (out / "inpainted" / "my_edit.png").write_bytes(b"mine")
    named = sorted(p.name for p in (out / "inpainted").glob("*.png") if p.name != "my_edit.png")
    assert len(named) == COUNT
    no_gt = tmp_path / "no_gt"  # the same images without test_gt.csv beside them
    shutil.copytree(world / "data" / "masked_image", no_gt / "masked_image")
    inpainting_cli.main([*inpainting_args(world), "--output-dir", str(out), "--baseline", "mean-fill",
                     "--test-maskedimage-path", str(no_gt / "masked_image"), "--partial", "0.5"])
    # 4 lab-named images, metrics.json, 4 inpainted/ images and their list
    assert f"removed {2 * COUNT + 2} files of an earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "inpainted").glob("*.png")) == [*named[:2], "my_edit.png"]
    assert (out / "inpainted" / "my_edit.png").read_bytes() == b"mine"
    assert not (out / "metrics.json").exists()
    assert sorted(p.name for p in (out / "test_results").iterdir()) == ["image_000.png", "image_001.png",
                                                                      "image_best.png"]
    assert (out / "test_results" / "image_best.png").read_bytes() == b"mine" and (out / "notes.txt").is_file()


def test_an_export_replaces_only_an_export_of_the_same_source(world, tmp_path, capsys):
    dest = tmp_path / "vq"
    args = ["vqgan", str(world / "model/vqgan.pt"), "--config", str(world / "model/VQGAN.yml"), "--out", str(dest)]
    convert_weights.main(args)
    first = json.loads((dest / "config.json").read_text())
    convert_weights.main(args)  # the same file again: replaced as documented
    other = ["vqgan", str(world / "plain_run" / "last.pt"), *args[2:]]
    with pytest.raises(UserError, match="holds another vqgan model"):
        convert_weights.main(other)
    assert json.loads((dest / "config.json").read_text()) == first
    convert_weights.main([*other, "--overwrite"])
    assert json.loads((dest / "config.json").read_text())["origin"] != first["origin"]
    with pytest.raises(UserError, match="is not an exported model folder"):  # --overwrite never empties a user's folder
        convert_weights.main([*args[:-1], str(world / "mine"), "--overwrite"])


def test_masks_rerun_replaces_its_own_and_overwrite_a_hand_made_one(world, tmp_path, monkeypatch):
    out = shutil.copytree(world / "handmasks", tmp_path / "masks")
    data.masks.write_masks("box", world / "images", tmp_path / "fresh")
    data.masks.write_masks("box", world / "images", tmp_path / "fresh")  # same masks: no --overwrite needed
    monkeypatch.setattr(sys, "argv", ["masks", "--kind", "box", "--images", str(world / "images"), "--out", str(out),
                                      "--overwrite"])
    data.masks.main()
    assert snapshot(out) == snapshot(tmp_path / "fresh")


def test_compare_runs_writes_into_a_folder_and_replaces_its_own_figure(world, tmp_path):
    argv = ["--runs", str(world / "prev"), "--masked", str(world / "data/masked_image"), "--masks",
            str(world / "data/mask64"), "--gt-path", str(world / "data/test_gt.csv"), "--images", "2",
            "--out", str(tmp_path)]
    compare_runs.main(argv)
    assert [p.name for p in tmp_path.iterdir()] == ["compare.png"]
    compare_runs.main(argv)  # its own figure: replaced
    assert [p.name for p in tmp_path.iterdir()] == ["compare.png"]


# ----------------------------------------------------------------------------- the API and the loading checks

@pytest.fixture(scope="module")
def tiny_model(world):
    return MaskGit.from_pretrained(world / "tr_export")


IMAGE = np.full((16, 16, 3), 128, np.uint8)
HOLE = np.zeros((16, 16), bool)
HOLE[4:8, 4:8] = True


@pytest.mark.parametrize("image, mask, options, message", [
    (None, HOLE, {}, "not NoneType"),
    (torch.zeros(3, 16, 16), HOLE, {}, "not Tensor"),
    ([[1, 2]], HOLE, {}, "not list"),
    (np.zeros((0, 0, 3), np.uint8), HOLE, {}, "is 0x0 pixels"),
    (IMAGE, HOLE.astype(float), {}, "mask array of values in [0, 1] is ambiguous"),
    (IMAGE, HOLE, {"total_iter": 2.5}, "total_iter) must be an integer, got 2.5"),
    (IMAGE, HOLE, {"total_iter": "3"}, "got '3'"),
    (IMAGE, HOLE, {"total_iter": 17}, "must be between 1 and 16, got 17"),  # 16 tokens
    (IMAGE, HOLE, {"seed": 1.5}, "seed) must be an integer, got 1.5"),
    (IMAGE, HOLE, {"seed": 10**30}, "got 1000000000000000000000000000000"),
    (IMAGE, HOLE, {"sample_temperature": float("nan")}, "must be a finite number, got nan"),
    (IMAGE, HOLE, {"choice_temperature": float("inf")}, "got inf"),
])
def test_inpaint_bad_input_is_one_user_error(tiny_model, image, mask, options, message):
    with pytest.raises(UserError) as err:
        inpaint(image, mask, tiny_model, **options)
    assert message in str(err.value)


def test_the_largest_seed_runs(tiny_model):
    assert inpaint(IMAGE, HOLE, tiny_model, seed=SEED_MAX, readout="sample").image.shape == (16, 16, 3)


@pytest.mark.parametrize("path, message", [
    (None, "not None"), (5, "not 5"), ("no/such/model", "model not found"),
    ("W/model/transformer.pt", "is a file, not an exported model folder")])
def test_from_pretrained_bad_path(world, path, message):
    path = str(path).replace("W/", f"{world}/") if isinstance(path, str) else path
    with pytest.raises(UserError, match=message):
        MaskGit.from_pretrained(path)
    if isinstance(path, str) and path.startswith(str(world)):
        with pytest.raises(UserError, match="device"):
            MaskGit.from_pretrained(world / "tr_export", device="tpu")


@pytest.mark.parametrize("damage, message", [
    ("flip", "model.safetensors does not match the digest in its config.json"),
    ("zero digest", "does not match the digest"),
    ("no config", "is not an exported model folder (no config.json)"),
])
@pytest.mark.parametrize("kind", ["maskgit", "vqgan"])
def test_damaged_model_folders_are_refused_on_load(world, tmp_path, damage, message, kind):
    model = shutil.copytree(world / "tr_export", tmp_path / "tr")
    vqgan = shutil.copytree(world / "vq_export", tmp_path / "vq")
    folder = model if kind == "maskgit" else vqgan
    weights, config = folder / "model.safetensors", folder / "config.json"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        data[-7] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "zero digest":
        meta = json.loads(config.read_text())
        config.write_text(json.dumps({**meta, "digest": "sha256:" + "0" * 64}))
    else:
        config.unlink()
    with pytest.raises(UserError, match=re.escape(message)):
        MaskGit.from_pretrained(model, vqgan)


def test_a_transformer_given_as_the_vqgan_is_named(world):
    with pytest.raises(UserError, match="holds transformer weights, not a VQGAN"):
        MaskGit.from_pretrained(world / "tr_export", world / "model" / "transformer.pt")
    with pytest.raises(UserError, match="holds a maskgit model, not a vqgan one"):
        MaskGit.from_pretrained(world / "tr_export", world / "tr_export")


def test_exif_orientation_turns_images_and_masks_alike(tmp_path):
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, :4] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the band at the top
    Image.fromarray(wide).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    Image.fromarray(wide[..., 0]).save(tmp_path / "mask.png", exif=exif)
    shown = read_image(tmp_path / "photo.jpg")
    assert shown.shape == (16, 8, 3) and shown[:4].mean() > 200 and shown[8:].mean() < 50
    assert data.masks.image_size(tmp_path / "photo.jpg") == (8, 16)
    mask = data.masks.read_hole(tmp_path / "mask.png")
    assert mask.shape == (16, 8) and not mask[:4].any() and mask[8:].all()


def test_path_checks_answer_as_for_an_unprivileged_user(tmp_path, monkeypatch):
    """root reads and writes anything, so os.access answers as it would for another user."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "config.yml").write_text("x")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not Path(p).is_relative_to(locked) and real_access(p, mode))
    with pytest.raises(UserError, match=f"--config {locked / 'config.yml'} is not readable"):
        check_readable(locked / "config.yml", "--config", folder=False)
    with pytest.raises(UserError, match=f"--images {locked} is not readable"):
        check_readable(locked, "--images", folder=True)
    with pytest.raises(UserError, match=f"--export {locked / 'new'}: {locked} is not writable"):
        check_writable(locked / "new", "--export")
    with pytest.raises(UserError, match=f"--out {locked / 'fig.png'}: {locked} is not writable"):
        check_destination(locked / "fig.png", "--out")
    with pytest.raises(UserError, match=f"--cache-dir {locked} is not writable|{locked} is not writable"):
        check_output_dir(locked, "--cache-dir")
    with pytest.raises(UserError, match="--runs .* is a file, not a folder"):
        check_readable(locked / "config.yml", "--runs", folder=True)


def make_pairs(folder: Path, image_names: list[str], mask_names: list[str]) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    mask = np.full((16, 16), 255, np.uint8)
    mask[4:8, 4:8] = 0
    for name in image_names:
        save_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), folder / "masked" / name)
    for name in mask_names:
        save_png(mask, folder / "masks" / name)
    return folder / "masked", folder / "masks"


@pytest.mark.parametrize("images, masks", [
    (["1f194.png", "1f19a.png"], ["1f194.png", "1f19a.png"]),  # the built dataset's names
    (["image_000.png", "image_001.png"], ["mask_000.png", "mask_001.png"]),
    (["image_9.png", "image_10.png"], ["mask_9.png", "mask_10.png"]),
    (["image_9.png", "image_10.png"], ["mask_009.png", "mask_010.png"]),  # paired by their numbers
])
def test_corresponding_names_pair_silently(tmp_path, images, masks):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InpaintingDataset(*make_pairs(tmp_path, images, masks), 0.5, 0.5, size=16)


@pytest.mark.parametrize("images, masks, message", [
    (["cat.png", "dog.png", "image_2.png"], ["mask_000.png", "mask_001.png", "mask_002.png"],
     r"2 of 3 images .* mask of another name .* e\.g\. cat\.png with mask_000\.png"),
    (["image_0.png", "image_1.png"], ["mask_1.png", "mask_2.png"],  # numbered apart: paired in order
     r"2 of 2 images .* e\.g\. image_0\.png with mask_1\.png"),
])
def test_unrelated_names_warn_with_an_example(tmp_path, images, masks, message):
    with pytest.warns(UserWarning, match=message):
        InpaintingDataset(*make_pairs(tmp_path, images, masks), 0.5, 0.5, size=16)


def test_prepare_reuses_a_complete_dataset_and_keeps_added_files(world, tmp_path, capsys):
    built = shutil.copytree(world / "built", tmp_path / "built")
    before = snapshot(built)
    prepare_dataset(built, world / "src", progress=False)
    assert "complete and up to date" in capsys.readouterr().out
    assert snapshot(built) == before


def test_prepare_force_names_the_files_it_deletes(world, tmp_path, capsys):
    built = shutil.copytree(world / "built", tmp_path / "built")
    prepare_dataset(built, world / "src", seed=1, force=True, progress=False)
    assert "deleting 1 file(s) that data.prepare did not write or that changed: my_notes.txt" in capsys.readouterr().out
    assert not (built / "my_notes.txt").exists() and (built / "MANIFEST.json").is_file()


# ----------------------------------------------------------------------------- kill during a save

WRITER = """
import sys, torch
from common import save_checkpoint
big = torch.zeros(4_000_000)
for version in range(1, 10_000):
    big[0] = version
    save_checkpoint({"version": version, "weights": big}, sys.argv[1])
    if version == 1:
        print("saved once", flush=True)
"""


def test_kill_during_checkpoint_writes_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop, at two moments after its first
    write: the file is always a complete checkpoint (the last one finished), and only the writer's
    temporary file can be left, which remove_orphaned_temp_files (run at each training start) removes."""
    path = tmp_path / "last.pt"
    for delay in (0.02, 0.2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ROOT)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == "saved once"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        checkpoint = load_checkpoint(path)
        assert checkpoint["version"] >= 1 and checkpoint["weights"][0] == checkpoint["version"]
        assert len(checkpoint["weights"]) == 4_000_000
        remove_orphaned_temp_files(tmp_path)  # what a killed writer leaves; never read as a checkpoint
        assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("argv, message", [
    (["--port", "-1"], "--port"),
    (["--port", "70000"], "--port"),
    (["--test-images", "/nonexistent/pictures"], "/nonexistent/pictures"),
])
def test_app_refuses_a_bad_port_or_picker_folder_before_loading_anything(argv, message, monkeypatch):
    import app

    monkeypatch.setattr(app.MaskGit, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UserError, match=message):
        app.main(argv)


def test_app_refuses_a_port_in_use(monkeypatch):
    import socket

    import app

    monkeypatch.setattr(app.MaskGit, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=str(port)):
            app.main(["--port", str(port)])


def test_a_page_upload_that_is_not_an_image_is_one_message(tmp_path):
    """gradio decodes an upload before any handler of ours runs: the page's image widget turns a file
    it cannot decode into one message for the page (gr.Error, no server traceback)."""
    gr = pytest.importorskip("gradio")
    from types import SimpleNamespace

    from gradio.data_classes import ImageData

    import app

    page = app.build(SimpleNamespace(mask_func="cosine", choice_temperature=4.5), [])
    widget = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "image")
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(gr.Error, match="notes.txt is not an image this page can read") as caught:
        widget.preprocess(ImageData(path=str(tmp_path / "notes.txt"), orig_name="notes.txt"))
    assert not caught.value.print_exception
    Image.new("RGB", (8, 6), (10, 20, 30)).save(tmp_path / "ok.png")  # a real image still reads as before
    pixels = widget.preprocess(ImageData(path=str(tmp_path / "ok.png"), orig_name="ok.png"))
    assert pixels.shape == (6, 8, 3) and tuple(pixels[0, 0]) == (10, 20, 30)
