"""Tests for data/: the Twemoji builder (on a small subset), the OpenMoji one (on SVGs written here), the Noto
and Fluent ones (on tiny npm packages written here), masks, loaders and every bad-input path."""
from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data.masks
import data.prepare
from common import UserError, run_cli
from data import (
    MASK_KINDS,
    ImageFolderDataset,
    InpaintingDataset,
    assign_splits,
    denormalize,
    generate_mask,
    group_key,
    hole_fraction,
    list_images,
    normalize,
    pixel_to_token_mask,
    prepare_dataset,
    read_gt_csv,
    to_uint8_image,
)
from data.prepare import SKIN_TONES, is_private_use, openmoji_stem, twemoji_folder

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def splits_of(out: Path) -> dict[str, str]:
    """The split ("train", "val" or "test") each image stem of a built dataset landed in."""
    return {p.stem: s for s in ("train", "val", "test") for p in list_images(out / s)}


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The dataset built from the first 40 Twemoji PNGs (a fraction of a second)."""
    return prepare_dataset(tmp_path_factory.mktemp("build") / "twemoji", limit=40, progress=False)


# ---- grouping and split -------------------------------------------------------------------------


def test_group_key_merges_variants():
    runner = {"1f3c3", "1f3c3-1f3fb", "1f3c3-1f3ff-200d-2640-fe0f", "1f3c3-200d-2642-fe0f-200d-27a1-fe0f"}
    assert {group_key(s) for s in runner} == {"1f3c3"}
    cooks = {"1f468-200d-1f373", "1f469-1f3fd-200d-1f373", "1f9d1-200d-1f373"}
    assert {group_key(s) for s in cooks} == {"1f373"}
    assert group_key("1f468-200d-1f9b0") == group_key("1f469-1f3fb-200d-1f9b3") == group_key("1f9d1")
    assert group_key("2764-fe0f") == group_key("2764") == group_key("2764-fe0f-200d-1f525")
    assert group_key("1f469-200d-2764-fe0f-200d-1f48b-200d-1f468") == group_key("1f48f") == "kiss"
    assert group_key("1f1eb-1f1f7") != group_key("1f1e9-1f1ea")  # flags stay apart


def test_split_is_grouped_balanced_and_deterministic():
    stems = sorted(p.stem for p in twemoji_folder().glob("*.png"))
    splits = assign_splits(stems, seed=0)
    assert splits == assign_splits(list(reversed(stems)), seed=0)
    counts = collections.Counter(splits.values())
    for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(counts[split] / len(stems) - share) < 0.01
    by_group = collections.defaultdict(set)
    for stem in stems:
        by_group[group_key(stem)].add(splits[stem])
    assert all(len(s) == 1 for s in by_group.values())
    waving = [s for s in stems if s.startswith("1f44b")]  # waving hand and its five skin tones
    assert len(waving) == 6 and len({splits[s] for s in waving}) == 1
    # groups of skin-tone variants do reach the held-out splits
    assert any(splits[s] == "test" and SKIN_TONES & set(s.split("-")) for s in stems)


# ---- the builder --------------------------------------------------------------------------------


def test_prepare_layout_csv_masks_and_stats(built):
    names = {folder: [p.name for p in list_images(built / folder)] for folder in ("test", "masked_image", "mask64")}
    assert names["test"] == names["masked_image"] == names["mask64"]
    counts = json.loads((built / "stats.json").read_text())["counts"]
    assert counts == {s: len(list_images(built / s)) for s in ("train", "val", "test")}
    assert sum(counts.values()) == 40
    clean = np.stack([read(built / "test" / n) for n in names["masked_image"]])
    assert np.array_equal(read_gt_csv(built / "test_gt.csv"), clean)
    assert clean.shape[1:] == (64, 64, 3)
    for i, name in enumerate(names["mask64"]):
        mask, masked = read(built / "mask64" / name), read(built / "masked_image" / name)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert 0.1 <= hole_fraction(mask) <= 0.5
        assert (masked[mask == 0] == 128).all() and np.array_equal(masked[mask == 255], clean[i][mask == 255])
    train = np.stack([read(p) for p in list_images(built / "train")]) / 255.0
    stats = json.loads((built / "stats.json").read_text())
    np.testing.assert_allclose(stats["mean"], train.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(stats["std"], train.std(axis=(0, 1, 2)), atol=1e-5)
    assert "CC-BY 4.0" in (built / "CREDITS.md").read_text()


def test_prepare_is_byte_identical_and_skips_a_complete_build(built, tmp_path, capsys):
    again = prepare_dataset(tmp_path / "twemoji", limit=40, progress=False)
    assert tree_bytes(again) == tree_bytes(built)
    prepare_dataset(again, limit=40, progress=False)
    assert "up to date" in capsys.readouterr().out


def test_prepare_interrupted_build_is_rebuilt(built, tmp_path, monkeypatch):
    out = tmp_path / "twemoji"
    calls = []

    def save_then_interrupt(array, path):
        calls.append(path)
        if len(calls) > 10:
            raise KeyboardInterrupt
        Image.fromarray(array).save(path, format="PNG", compress_level=6)

    monkeypatch.setattr(data.prepare, "save_png", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(out, limit=40, progress=False)
    assert not out.exists() and (tmp_path / ".twemoji.partial").is_dir()
    monkeypatch.undo()
    prepare_dataset(out, limit=40, progress=False)
    assert tree_bytes(out) == tree_bytes(built)
    assert not (tmp_path / ".twemoji.partial").exists()


def test_prepare_rebuilds_missing_files_but_not_changed_ones_without_force(built, tmp_path, capsys):
    out = tmp_path / "twemoji"
    shutil.copytree(built, out)
    next((out / "train").iterdir()).unlink()  # only its own files missing: rebuilt without asking
    prepare_dataset(out, limit=40, progress=False)
    assert "rebuilding" in capsys.readouterr().out
    assert tree_bytes(out) == tree_bytes(built)
    changed = out / "mask64" / list_images(out / "mask64")[0].name
    changed.write_bytes(b"edited or damaged")
    with pytest.raises(UserError, match=f"changed since \\(e.g. mask64/{changed.name}\\).*--force"):
        prepare_dataset(out, limit=40, progress=False)
    assert changed.read_bytes() == b"edited or damaged"
    prepare_dataset(out, limit=40, force=True, progress=False)
    assert f"deleting 1 file(s) that data.prepare did not write or that changed: mask64/{changed.name}" in \
        capsys.readouterr().out
    assert tree_bytes(out) == tree_bytes(built)


def test_prepare_keeps_a_folder_it_did_not_build(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not built by data.prepare"):
        prepare_dataset(out, limit=40, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_prepare_from_a_source_folder_keeps_groups_together(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    emoji = sorted(twemoji_folder().glob("*.png"))
    picked = emoji[100:130] + [p for p in emoji if p.stem.startswith(("1f44b", "1f44d"))]
    for p in picked:
        shutil.copy(p, source)
    out = prepare_dataset(tmp_path / "out", source=source, progress=False)
    split_of = splits_of(out)
    assert sorted(split_of) == sorted(p.stem for p in picked)
    for base in ("1f44b", "1f44d"):
        assert len({s for stem, s in split_of.items() if stem.startswith(base)}) == 1


# ---- OpenMoji -----------------------------------------------------------------------------------


def write_svg(folder: Path, stem: str, fill: str = "#FCEA2B") -> None:
    """An OpenMoji-like SVG: a 72x72 viewBox, transparent, a filled disc in the middle."""
    (folder / f"{stem}.svg").write_text(
        '<svg id="emoji" viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">\n'
        f'  <circle cx="36" cy="36" r="23" fill="{fill}" stroke="#000000" stroke-width="2"/>\n</svg>\n')


def test_openmoji_names_take_twemoji_form():
    assert openmoji_stem("1F3C3-1F3FB-200D-2640-FE0F") == "1f3c3-1f3fb-200d-2640-fe0f"
    assert openmoji_stem("00A9") == "a9" and openmoji_stem("0023-FE0F-20E3") == "23-fe0f-20e3"
    assert openmoji_stem("1f3f4-e0067_e0062_e0077_e006c_e0073") == "1f3f4-e0067-e0062-e0077-e006c-e0073"  # Fluent
    assert group_key(openmoji_stem("1F469-1F3FD-200D-1F373")) == group_key("1f9d1-200d-1f373") == "1f373"
    assert openmoji_stem("Smile") == "smile"  # not codepoints: only lowercased
    assert is_private_use("e0ac-200d-2640-fe0f") and is_private_use("f8ff") and is_private_use("f0000")
    assert not is_private_use("1f600") and not is_private_use("1f3f4-e0067-e0062-e0065-e006e-e0067-e007f")


def test_prepare_openmoji_renders_svgs_and_keeps_variants_together(tmp_path, monkeypatch, capsys):
    source = tmp_path / "svg"
    source.mkdir()
    waving = ["1F44B", *(f"1F44B-{tone.upper()}" for tone in sorted(SKIN_TONES))]
    for stem in waving:
        write_svg(source, stem, "#F1B31C")
    for i in range(10):
        write_svg(source, f"1F60{i}")
    for extra in ("E0AC", "E0AC-200D-2640-FE0F"):  # OpenMoji's private-use extras: skipped
        write_svg(source, extra)
    out = tmp_path / "openmoji"
    args = ["--style", "openmoji", "--source", str(source), "--out", str(out)]
    code, err = run_in_process(monkeypatch, capsys, data.prepare, *args)
    assert code == 0 and "error" not in err, err
    split_of = splits_of(out)
    assert sorted(split_of) == sorted(openmoji_stem(s) for s in [*waving, *(f"1F60{i}" for i in range(10))])
    assert len({split_of[openmoji_stem(s)] for s in waving}) == 1
    counts = json.loads((out / "stats.json").read_text())["counts"]
    assert counts == {"train": 12, "val": 2, "test": 2}
    image = read(out / "train" / "1f44b-1f3fb.png")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 255, 255]  # transparent corner composited on white
    assert image[32, 32].tolist() == [0xF1, 0xB3, 0x1C]  # the disc's fill, inside its outline
    # the outline: 2/72 wide at x = 13/72 of the width, pixels 10.7 to 12.4 of 64; white outside it
    assert image[32, 11].tolist() == [0, 0, 0] and image[32, 6].tolist() == [255, 255, 255]
    names = [p.name for p in list_images(out / "test")]
    assert names == [p.name for p in list_images(out / "mask64")]
    assert np.array_equal(read_gt_csv(out / "test_gt.csv"), np.stack([read(out / "test" / n) for n in names]))
    credits = (out / "CREDITS.md").read_text()
    assert "OpenMoji" in credits and "CC-BY-SA 4.0" in credits and "Twemoji" not in credits
    params = json.loads((out / "MANIFEST.json").read_text())["params"]
    assert params["style"] == "openmoji" and params["renderer"].startswith("resvg-py ")
    again = prepare_dataset(tmp_path / "again", source, progress=False, style="openmoji")
    assert tree_bytes(again) == tree_bytes(out)
    prepare_dataset(out, source, progress=False, style="openmoji")
    assert "up to date" in capsys.readouterr().out


def test_prepare_openmoji_names_a_broken_svg(tmp_path):
    source = tmp_path / "svg"
    source.mkdir()
    for i in range(4):
        write_svg(source, f"1F60{i}")
    (source / "1F605.svg").write_text("<svg viewBox='0 0 72 72'")
    with pytest.raises(UserError, match="1F605.svg"):
        prepare_dataset(tmp_path / "out", source, progress=False, style="openmoji")
    with pytest.raises(UserError, match="no SVG files"):
        prepare_dataset(tmp_path / "out", tmp_path, progress=False, style="openmoji")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svg"]


# ---- Noto ---------------------------------------------------------------------------------------

NOTO_WAVING = ["1f44b", *(f"1f44b-{tone}" for tone in sorted(SKIN_TONES))]
NOISE = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)


def write_noto_package(root: Path, name: str = "emoji-datasource-google") -> Path:
    """A tiny emoji-datasource-google package: package.json and, in img/google/64, 64x64 PNGs under Google's
    names (leading zeros, skin tones, a private-use one), plus a sprite sheet that is no emoji."""
    pngs = root / "img" / "google" / "64"
    pngs.mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": name, "version": "16.0.0", "license": "MIT"}))
    disc = np.zeros((64, 64, 4), np.uint8)  # transparent, a yellow disc in the middle
    yy, xx = np.mgrid[:64, :64]
    disc[(yy - 32) ** 2 + (xx - 32) ** 2 < 20**2] = (0xF1, 0xB3, 0x1C, 255)
    for stem in [*NOTO_WAVING, "0023-fe0f-20e3", *(f"1f60{i}" for i in range(1, 10)), "e50a"]:
        save(pngs / f"{stem}.png", disc)
    save(pngs / "1f600.png", NOISE)  # opaque and already 64x64: kept exactly
    gray = np.zeros((64, 64, 2), np.uint8)  # gray + alpha ("LA"), as 62 of Google's PNGs are
    gray[16:48, 16:48] = (90, 255)
    save(pngs / "00a9.png", gray)
    (root / "img" / "google" / "sheets").mkdir()
    save(root / "img" / "google" / "sheets" / "64.png", np.zeros((64, 64, 3)))
    return root


def test_prepare_noto_takes_twemoji_names_and_keeps_variants_together(tmp_path, monkeypatch, capsys):
    package = write_noto_package(tmp_path / "package")
    out = tmp_path / "noto"
    args = ["--style", "noto", "--source", str(package), "--out", str(out)]
    code, err = run_in_process(monkeypatch, capsys, data.prepare, *args)
    assert code == 0 and "error" not in err, err
    split_of = splits_of(out)
    # leading zeros dropped, the private-use e50a and the sheet left out
    assert sorted(split_of) == sorted([*NOTO_WAVING, "23-fe0f-20e3", "a9", *(f"1f60{i}" for i in range(10))])
    assert len({split_of[s] for s in NOTO_WAVING}) == 1
    counts = json.loads((out / "stats.json").read_text())["counts"]
    assert counts == {"train": 14, "val": 2, "test": 2}
    assert np.array_equal(read(out / split_of["1f600"] / "1f600.png"), NOISE)
    disc = read(out / split_of["1f44b-1f3fd"] / "1f44b-1f3fd.png")
    assert disc.shape == (64, 64, 3) and disc[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert disc[32, 32].tolist() == [0xF1, 0xB3, 0x1C]
    gray = read(out / split_of["a9"] / "a9.png")
    assert gray[0, 0].tolist() == [255, 255, 255] and gray[32, 32].tolist() == [90, 90, 90]
    names = [p.name for p in list_images(out / "test")]
    assert names == [p.name for p in list_images(out / "mask64")] == [p.name for p in list_images(out / "masked_image")]
    assert np.array_equal(read_gt_csv(out / "test_gt.csv"), np.stack([read(out / "test" / n) for n in names]))
    credits = (out / "CREDITS.md").read_text()
    assert "Noto Emoji" in credits and "Apache License 2.0" in credits and "CC-BY" not in credits
    assert "emoji-datasource-google" in credits and "public domain" in credits  # flags, per noto-emoji
    params = json.loads((out / "MANIFEST.json").read_text())["params"]
    assert params["style"] == "noto" and params["package"] == "emoji-datasource-google 16.0.0"


def test_prepare_noto_builds_the_same_bytes_from_the_folder_its_pngs_or_the_tgz(tmp_path, capsys):
    package = write_noto_package(tmp_path / "package")
    built = prepare_dataset(tmp_path / "a", package, progress=False, style="noto")
    from_pngs = prepare_dataset(tmp_path / "b", package / "img" / "google" / "64", progress=False, style="noto")
    tgz = tmp_path / "emoji-datasource-google-16.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(package, arcname="package")  # as `npm pack` makes it, sheets and all
    from_tgz = prepare_dataset(tmp_path / "c", tgz, progress=False, style="noto")
    assert tree_bytes(from_pngs) == tree_bytes(from_tgz) == tree_bytes(built)
    prepare_dataset(built, tgz, progress=False, style="noto")
    assert "up to date" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", tgz.name, "package"]


def test_prepare_noto_without_its_package_says_how_to_fetch_it(tmp_path, monkeypatch, capsys):
    apple = write_noto_package(tmp_path / "apple", name="emoji-datasource-apple")
    (tmp_path / "notes.tgz").write_text("not a tar")
    cases = [
        ([], "needs the PNGs of the npm package emoji-datasource-google 16.0.0"),
        (["--source", str(tmp_path / "nope")], "nope not found"),
        (["--source", str(tmp_path)], "is not the extracted emoji-datasource-google package folder"),
        (["--source", str(apple)], "is the npm package emoji-datasource-apple"),
        (["--source", str(tmp_path / "notes.tgz")], "notes.tgz as the package's .tgz"),
    ]
    for args, needle in cases:
        code, err = run_in_process(monkeypatch, capsys, data.prepare, "--style", "noto", "--out",
                                   str(tmp_path / "out"), *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
        assert "`npm pack emoji-datasource-google@16.0.0` and `tar xzf emoji-datasource-google-16.0.0.tgz`" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apple", "notes.tgz"]  # nothing written


# ---- Fluent --------------------------------------------------------------------------------------


def write_fluent_package(root: Path, name: str = "@lobehub/fluent-emoji-flat") -> Path:
    """A tiny @lobehub/fluent-emoji-flat package: package.json and, in assets/, SVGs under its names
    (leading zeros, skin tones), plus a README that is no picture."""
    assets = root / "assets"
    assets.mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": name, "version": "1.1.0", "license": "MIT"}))
    (root / "README.md").write_text("# Fluent Emoji")
    for stem in [*NOTO_WAVING, "0023-fe0f-20e3"]:
        write_svg(assets, stem, "#F1B31C")
    for i in range(10):
        write_svg(assets, f"1f60{i}")
    return root


def test_prepare_fluent_renders_the_packages_svgs_the_same_from_folder_and_tgz(tmp_path, monkeypatch, capsys):
    package = write_fluent_package(tmp_path / "package")
    out = tmp_path / "fluent"
    code, err = run_in_process(monkeypatch, capsys, data.prepare, "--style", "fluent", "--source", str(package),
                               "--out", str(out))
    assert code == 0 and "error" not in err, err
    split_of = splits_of(out)
    assert sorted(split_of) == sorted([*NOTO_WAVING, "23-fe0f-20e3", *(f"1f60{i}" for i in range(10))])
    assert len({split_of[s] for s in NOTO_WAVING}) == 1
    disc = read(out / split_of["1f44b"] / "1f44b.png")  # the circle of write_svg, rendered on white
    assert disc.shape == (64, 64, 3) and disc[0, 0].tolist() == [255, 255, 255]
    assert disc[32, 32].tolist() == [0xF1, 0xB3, 0x1C]
    credits = (out / "CREDITS.md").read_text()
    assert "Fluent Emoji by Microsoft" in credits and "MIT License" in credits and "CC-BY" not in credits
    params = json.loads((out / "MANIFEST.json").read_text())["params"]
    assert params["style"] == "fluent" and params["package"] == "@lobehub/fluent-emoji-flat 1.1.0"
    assert params["renderer"].startswith("resvg-py ")
    tgz = tmp_path / "lobehub-fluent-emoji-flat-1.1.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(package, arcname="package")
    from_tgz = prepare_dataset(tmp_path / "b", tgz, progress=False, style="fluent")
    from_assets = prepare_dataset(tmp_path / "c", package / "assets", progress=False, style="fluent")
    assert tree_bytes(from_tgz) == tree_bytes(from_assets) == tree_bytes(out)


def test_prepare_fluent_without_its_package_says_how_to_fetch_it(tmp_path, monkeypatch, capsys):
    noto = write_noto_package(tmp_path / "noto")
    cases = [
        ([], "needs the SVGs of the npm package @lobehub/fluent-emoji-flat 1.1.0"),
        (["--source", str(noto)], "is not the extracted @lobehub/fluent-emoji-flat package folder"),
        (["--source", str(write_fluent_package(tmp_path / "other", name="fluent-emoji"))],
         "is the npm package fluent-emoji, not @lobehub/fluent-emoji-flat"),
    ]
    for args, needle in cases:
        code, err = run_in_process(monkeypatch, capsys, data.prepare, "--style", "fluent", "--out",
                                   str(tmp_path / "out"), *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
        assert "`npm pack @lobehub/fluent-emoji-flat@1.1.0` and `tar xzf lobehub-fluent-emoji-flat-1.1.0.tgz`" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noto", "other"]  # nothing written


# ---- Iconify icon sets (EmojiOne, FxEmojis) ------------------------------------------------------

TONES = ["light", "medium-light", "medium", "medium-dark", "dark"]


def write_icon_set(root: Path, icons: dict | None = None, name: str = "@iconify-json/emojione") -> Path:
    """A tiny @iconify-json/emojione package: package.json and an icons.json (the set's 64x64 size, one icon
    with its own 32x16 box, skin-tone variants, an alias), plus a README that is no picture."""
    root.mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": name, "version": "1.2.3", "license": "CC-BY-4.0"}))
    (root / "README.md").write_text("# Emoji One")
    disc = '<circle cx="32" cy="32" r="20" fill="{}"/>'
    if icons is None:
        icons = {"waving-hand": {"body": disc.format("#ffce31")},
                 **{f"waving-hand-{tone}-skin-tone": {"body": disc.format("#e0a070")} for tone in TONES},
                 "wide-bar": {"body": '<rect x="0" y="0" width="32" height="16" fill="#428bc1"/>',
                              "width": 32, "height": 16},
                 **{f"face-{i}": {"body": disc.format("#ed4c5c")} for i in range(10)}}
    (root / "icons.json").write_text(json.dumps({"prefix": "emojione", "icons": icons, "width": 64, "height": 64,
                                                 "aliases": {"hand": {"parent": "waving-hand"}}}))
    return root


def test_prepare_emojione_writes_the_icon_sets_svgs_the_same_from_folder_and_tgz(tmp_path, monkeypatch, capsys):
    package = write_icon_set(tmp_path / "package")
    out = tmp_path / "emojione"
    code, err = run_in_process(monkeypatch, capsys, data.prepare, "--style", "emojione", "--source", str(package),
                               "--out", str(out))
    assert code == 0 and "error" not in err, err
    split_of = splits_of(out)
    waving = ["waving-hand", *(f"waving-hand-{tone}-skin-tone" for tone in TONES)]
    assert sorted(split_of) == sorted([*waving, "wide-bar", *(f"face-{i}" for i in range(10))])  # no alias
    assert len({split_of[s] for s in waving}) == 1  # the skin tones stay with their picture
    disc = read(out / split_of["waving-hand"] / "waving-hand.png")  # the set's 64x64 box: drawn at scale
    assert disc[0, 0].tolist() == [255, 255, 255] and disc[32, 32].tolist() == [0xFF, 0xCE, 0x31]
    assert disc[32, 10].tolist() == [255, 255, 255] and disc[32, 14].tolist() == [0xFF, 0xCE, 0x31]  # r = 20
    bar = read(out / split_of["wide-bar"] / "wide-bar.png")  # its own 32x16 box, fitted and centred
    assert bar[32, 32].tolist() == [0x42, 0x8B, 0xC1] and bar[8, 32].tolist() == [255, 255, 255]
    credits = (out / "CREDITS.md").read_text()
    assert "Emoji One" in credits and "CC-BY 4.0" in credits and "@iconify-json/emojione" in credits
    params = json.loads((out / "MANIFEST.json").read_text())["params"]
    assert params["style"] == "emojione" and params["package"] == "@iconify-json/emojione 1.2.3"
    assert not (package / "svg").exists()  # the user's folder is only read
    tgz = tmp_path / "iconify-json-emojione-1.2.3.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(package, arcname="package")
    assert tree_bytes(prepare_dataset(tmp_path / "b", tgz, progress=False, style="emojione")) == tree_bytes(out)


def test_prepare_icon_set_refuses_what_it_cannot_draw_in_one_line(tmp_path, monkeypatch, capsys):
    fetch = "`npm pack @iconify-json/emojione@1.2.3` and `tar xzf iconify-json-emojione-1.2.3.tgz`"
    cases = [
        (write_icon_set(tmp_path / "a", {"../evil": {"body": "<g/>"}}), "icon '../evil' is not a name"),
        (write_icon_set(tmp_path / "b", {"turned": {"body": "<g/>", "rotate": 1}}), "is rotated or flipped"),
        (write_icon_set(tmp_path / "c", {"flat": {"body": "<g/>", "height": 0}}), "no valid left, top, width"),
        (write_icon_set(tmp_path / "d", {}), 'no "icons" in it'),
        (write_icon_set(tmp_path / "e", name="@iconify-json/fxemoji"), "is the npm package @iconify-json/fxemoji"),
        (tmp_path / "a" / "README.md", "cannot read --source"),  # not a .tgz
    ]
    (tmp_path / "f").mkdir()
    cases.append((tmp_path / "f", "is not the extracted @iconify-json/emojione package folder (no icons.json"))
    for source, needle in cases:
        code, err = run_in_process(monkeypatch, capsys, data.prepare, "--style", "emojione", "--source",
                                   str(source), "--out", str(tmp_path / "out"))
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, (needle, err)
        assert fetch in err
    assert not (tmp_path / "out").exists() and not any((tmp_path / d / "svg").exists() for d in "abcde")


# ---- masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_generate_mask_hole_fraction(kind):
    fractions = []
    for seed in range(40):
        mask = generate_mask(kind, 64, seed)
        assert mask.dtype == np.uint8 and mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        fractions.append(hole_fraction(mask))
    assert np.array_equal(generate_mask(kind, 64, 7), generate_mask(kind, 64, 7))
    assert min(fractions) >= 0.1 and max(fractions) <= 0.5
    if kind != "half":
        assert max(fractions) - min(fractions) > 0.2  # spread over the range, not one size


def test_generate_mask_unknown_kind():
    with pytest.raises(UserError, match="freeform, box, center, border, half"):
        generate_mask("blob")


def run_in_process(monkeypatch, capsys, module, *args: str) -> tuple[int, str]:
    """Run a CLI's main() through run_cli as `python -m module args` would; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    code = 0
    try:
        run_cli(module.main)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_masks_cli_writes_one_mask_per_image(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.jpg"):
        save(images / name, np.full((32, 32, 3), 200))
    args = ["--kind", "box", "--images", str(images), "--out", str(tmp_path / "masks"), "--masked-out", str(tmp_path)]
    assert run_in_process(monkeypatch, capsys, data.masks, *args) == (0, "")
    assert [p.name for p in list_images(tmp_path / "masks")] == ["a.png", "b.png"]
    mask, masked = read(tmp_path / "masks" / "a.png"), read(tmp_path / "a.png")
    assert mask.shape == (32, 32) and (masked[mask == 0] == 128).all() and (masked[mask == 255] == 200).all()


# Each CLI once in a real subprocess (exit code, stderr, no traceback); the other cases in-process.
def test_prepare_cli_fails_with_one_line(tmp_path):
    result = run_module("data.prepare", "--source", str(tmp_path), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "no images")


def test_masks_cli_fails_with_one_line(tmp_path):
    result = run_module("data.masks", "--kind", "blob", "--images", str(tmp_path), "--out", str(tmp_path))
    assert_one_line_error(result, "valid kinds: freeform, box, center, border, half")


def test_cli_bad_input_cases(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        save(images / name, np.zeros((8, 8, 3)))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cases = [
        (data.masks, ["--images", str(images), "--out", str(tmp_path / "m")], "broken.png"),
        (data.masks, ["--images", str(tmp_path / "nope"), "--out", str(tmp_path)], "not found"),
        (data.prepare, ["--limit", "0", "--out", str(tmp_path / "o")], "--limit"),
        (data.prepare, ["--source", str(images), "--out", str(tmp_path / "o")], "broken.png"),
    ]
    for module, args, needle in cases:
        code, err = run_in_process(monkeypatch, capsys, module, *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "m").exists()  # masks: every file is checked before anything is written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # prepare: no partial build left


# ---- loaders ------------------------------------------------------------------------------------


def test_normalization_values(tmp_path):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 51)
    save(tmp_path / "a.png", image)
    mean, std = [0.5, 0.25, 0.0], [0.5, 0.25, 0.2]
    x = ImageFolderDataset(tmp_path, mean, std)[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, 1.0]))
    torch.testing.assert_close(x[:, 1, 1], torch.tensor([-1.0, -1.0, 0.0]))
    assert np.array_equal(to_uint8_image(x[None], mean, std)[0], image)
    assert denormalize(x * 10, mean, std).min() >= 0 and denormalize(x * 10, mean, std).max() <= 1
    torch.testing.assert_close(normalize(image, mean, std), x)


def test_modes_converted_to_rgb_and_flip(tmp_path):
    gray = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    Image.fromarray(gray, "L").save(tmp_path / "a.png")
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "b.webp", lossless=True)
    plain = ImageFolderDataset(tmp_path, MEAN, STD)
    assert np.array_equal(to_uint8_image(plain[0], MEAN, STD), np.repeat(gray[..., None], 3, axis=2))
    assert (to_uint8_image(plain[1], MEAN, STD) == 255).all()  # transparent -> white
    flipping = ImageFolderDataset(tmp_path, MEAN, STD, flip=True)
    torch.manual_seed(0)
    seen = {bool(torch.equal(flipping[0], plain[0].flip(-1))) for _ in range(20)}
    assert seen == {True, False}


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ImageFolderDataset(tmp_path / "nope", MEAN, STD)
    with pytest.raises(UserError, match="no images"):
        ImageFolderDataset(tmp_path, MEAN, STD)


@pytest.mark.parametrize("damage", ["not_an_image", "truncated"])
def test_corrupt_file_is_named(tmp_path, damage):
    save(tmp_path / "a.png", np.zeros((64, 64, 3)))
    good = save(tmp_path / "b.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3))).read_bytes()
    bad = b"hello, not an image" if damage == "not_an_image" else good[: len(good) // 2]
    (tmp_path / "bad.png").write_bytes(bad)
    with pytest.raises(UserError, match="bad.png"):
        ImageFolderDataset(tmp_path, MEAN, STD)


def test_wrong_size_warns_or_refuses_in_strict_mode(tmp_path):
    save(tmp_path / "a.png", np.zeros((64, 64, 3)))
    save(tmp_path / "big.png", np.zeros((72, 72, 3)))
    with pytest.warns(UserWarning, match=r"1 of 2 images .* big.png is 72x72"):
        dataset = ImageFolderDataset(tmp_path, MEAN, STD)
    assert dataset[1].shape == (3, 64, 64)
    with pytest.raises(UserError, match="big.png"):
        ImageFolderDataset(tmp_path, MEAN, STD, strict=True)


def make_pairs(tmp_path: Path, masks: list[np.ndarray], n_images: int | None = None) -> tuple[Path, Path]:
    masked_dir, mask_dir = tmp_path / "masked_image", tmp_path / "mask64"
    masked_dir.mkdir()
    mask_dir.mkdir()
    for i in range(len(masks) if n_images is None else n_images):
        save(masked_dir / f"{i}.png", np.full((64, 64, 3), 10 * i))
    for i, mask in enumerate(masks):
        save(mask_dir / f"{i}.png", mask)
    return masked_dir, mask_dir


def test_inpainting_pairs_and_threshold(tmp_path):
    gray = np.full((64, 64), 255, dtype=np.uint8)
    gray[:, :20] = 127  # just below 50%: hole
    gray[:, 20:40] = 128  # 50%: known
    gray[0, 63] = 0
    dataset = InpaintingDataset(*make_pairs(tmp_path, [gray, generate_mask("box", 64, 1)]), MEAN, STD)
    image, hole, index = dataset[1]
    assert len(dataset) == 2 and index == 1 and image.shape == (3, 64, 64)
    assert to_uint8_image(image, MEAN, STD)[0, 0].tolist() == [10, 10, 10]
    hole = dataset[0][1]
    assert hole.shape == (1, 64, 64) and hole.dtype == torch.bool
    assert hole[0, :, :20].all() and not hole[0, 1:, 20:].any() and hole[0, 0, 63]


def test_inpainting_count_mismatch(tmp_path):
    with pytest.raises(UserError, match=r"3 masked images .* but 2 masks"):
        InpaintingDataset(*make_pairs(tmp_path, [generate_mask("box", 64, i) for i in range(2)], 3), MEAN, STD)


def test_all_hole_mask_is_an_error(tmp_path):
    masks = [generate_mask("box", 64, 0), np.zeros((64, 64))]
    with pytest.raises(UserError, match=r"1\.png is entirely hole"):
        InpaintingDataset(*make_pairs(tmp_path, masks), MEAN, STD)


def test_all_known_mask_warns_and_is_returned_unchanged(tmp_path):
    masks = [generate_mask("box", 64, 0), np.full((64, 64), 255)]
    with pytest.warns(UserWarning, match=r"1 of 2 masks .* entirely known .* 1\.png"):
        dataset = InpaintingDataset(*make_pairs(tmp_path, masks), MEAN, STD)
    image, hole, _ = dataset[1]
    assert not hole.any() and to_uint8_image(image, MEAN, STD)[5, 5].tolist() == [10, 10, 10]


def test_pixel_to_token_mask():
    hole = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    hole[0, 0, 5, 9] = True  # patch 4: row 1, column 2
    tokens = pixel_to_token_mask(hole, 16)
    assert tokens.shape == (2, 256) and tokens.dtype == torch.bool
    assert tokens.nonzero().tolist() == [[0, 1 * 16 + 2]]
    assert pixel_to_token_mask(hole[0, 0], 16).nonzero().flatten().tolist() == [18]
    hole[1, 0, 4:8, 60:64] = True  # exactly one patch: row 1, column 15
    assert pixel_to_token_mask(hole, 16)[1].nonzero().flatten().tolist() == [31]
    with pytest.raises(ValueError):
        pixel_to_token_mask(hole, 10)
    share = torch.zeros(64, 64, dtype=torch.bool)
    share[0, 0:4] = True  # patch 0: 4 of 16 pixels
    share[4:6, 4:7] = True  # patch 17: 6 of 16
    share[12, 12] = True  # patch 51: 1 of 16
    assert pixel_to_token_mask(share, 16, above=0.25).nonzero().flatten().tolist() == [17]
    assert pixel_to_token_mask(share, 16, above=0.2).nonzero().flatten().tolist() == [0, 17]
    assert pixel_to_token_mask(share, 16).nonzero().flatten().tolist() == [0, 17, 51]


def test_pixel_hole_bank_is_seeded_and_draws_the_training_hole_kinds():
    bank = data.masks.pixel_hole_bank(64, 64, seed=3)
    assert bank.shape == (64, 64, 64) and bank.dtype == bool
    assert np.array_equal(bank, data.masks.pixel_hole_bank(64, 64, seed=3))
    assert not np.array_equal(bank, data.masks.pixel_hole_bank(64, 64, seed=4))
    # rebuild the first hole from the same random stream
    rng, kinds = np.random.default_rng(3), data.masks.TRAINING_HOLE_KINDS
    weights = np.array(list(kinds.values()))
    kind = str(rng.choice(list(kinds), p=weights / weights.sum()))
    assert np.array_equal(bank[0], generate_mask(kind, 64, rng, data.masks.TRAINING_HOLE_RANGE) < 128)
    assert bank.any((1, 2)).all() and (~bank).any((1, 2)).all()  # every hole leaves something known


def test_masks_cli_writes_the_dataset_mix(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(images / f"{name}.png")
    data.masks.write_masks("dataset", images, tmp_path / "masks", seed=3)
    for name in ("a", "b", "c"):
        written = np.asarray(Image.open(tmp_path / "masks" / f"{name}.png"))
        assert np.array_equal(written, data.masks.dataset_mask(name, 64, 3))
    # the default dataset's test masks are this mix with the dataset seed (0)
    assert not np.array_equal(data.masks.dataset_mask("a", 64, 3), data.masks.dataset_mask("a", 64, 0))
