"""What a run writes in its output folder, under the lab's names, and the clean-up of an earlier run's."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset

from common import atomic_write
from data import read_hole, restore_size, save_png
from maskgit_inpaint.pipeline import Result
from maskgit_inpaint.preparation import input_files, read_rgb

OUTPUTS = ("test_results", "inpainted", "steps", "mask_scheduling", "imga", "overview.png",
           "metrics.json")  # what a run writes
WRITTEN = ".written.json"  # inpainted/'s list of the files a run wrote there


def save_results(out_dir: Path, result: Result) -> None:
    """test_results/image_{i:03d}.png for every image of a finished run."""
    (out_dir / "test_results").mkdir(parents=True, exist_ok=True)
    for i, pixels in zip(result.indices.tolist(), result.outputs):
        save_png(pixels, out_dir / "test_results" / f"image_{i:03d}.png")


def save_named(out_dir: Path, names: Sequence[str], originals: Sequence[tuple[np.ndarray, np.ndarray]],
               outputs: np.ndarray, fit: str, paste: bool) -> None:
    """inpainted/<name>.png for each input: its output at the input's size (restore_size) from the
    input's (original image, hole) pair."""
    folder = out_dir / "inpainted"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (original, hole), output in zip(names, originals, outputs):
        written.append(f"{Path(name).stem}.png")
        save_png(restore_size(original, hole, output, fit, paste), folder / written[-1])
    with atomic_write(folder / WRITTEN) as tmp:  # what the next run's clear_outputs may remove
        tmp.write_text(json.dumps(sorted(written)) + "\n")


def folder_originals(dataset: Dataset, indices: Sequence[int], hole_white: bool) -> tuple[list[str], list]:
    """File names and (image, hole) pairs at the images' own sizes of the items `indices` of an
    open_dataset: what save_named needs."""
    pairs = dataset.dataset if isinstance(dataset, Subset) else dataset
    names, originals = [], []
    for i in indices:
        original = read_rgb(input_files(dataset)[i])
        height, width = original.shape[:2]
        names.append(input_files(dataset)[i].name)
        originals.append((original, read_hole(pairs.mask_files[i], (width, height), hole_white)))
    return names, originals


def written_names(folder: Path) -> list[str]:
    """The inpainted/ files an earlier run wrote (its WRITTEN list) that are still there. Their names
    are the inputs' names, so only this list tells them from files the user keeps in the folder."""
    try:
        names = json.loads((folder / WRITTEN).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and Path(n).name == n and (folder / n).is_file()]


def clear_outputs(out_dir: Path) -> int:
    """Delete what an earlier run wrote in `out_dir`, and only that (files named as this script names
    them, and the inpainted/ files its WRITTEN list names): its images, so that a smaller run does
    not leave stale ones for FID to pick up, and its metrics.json, which a run without ground truth
    would otherwise leave behind. Returns how many files were removed."""
    patterns = {"test_results": r"image_\d{3,}\.png", "steps": r"test_\d+\.png", "mask_scheduling": r"test_\d+\.png",
                "imga": r"test_\d+\.png"}
    stale = [f for folder, pattern in patterns.items() for f in out_dir.glob(f"{folder}/*.png")
             if re.fullmatch(pattern, f.name)]
    stale += [f for f in [out_dir / "metrics.json"] if f.is_file()]
    stale += [out_dir / "inpainted" / name for name in written_names(out_dir / "inpainted")]
    stale += [f for f in [out_dir / "inpainted" / WRITTEN] if f.is_file()]
    for file in stale:
        file.unlink()
    return len(stale)
