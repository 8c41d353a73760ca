"""The course lab's workflow without surprises: unpadded file names in numeric order, images, masks
and ground truth paired by the numbers in their names, test_gt.csv found where lab users keep it."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_inpainting import write_configs, write_dataset

from data import list_images
from data.ground_truth import write_gt_csv
from maskgit_inpaint import cli as inpainting_cli

COUNT = 12  # enough for image_10 and image_11 to sort before image_2 by plain name


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """A zero-padded dataset (00.png ...) and the same files under the lab's unpadded names."""
    root = tmp_path_factory.mktemp("lab")
    config = write_configs(root / "model")
    padded = write_dataset(root / "padded", COUNT)
    unpadded = root / "dataset"
    for sub, prefix in (("masked_image", "image"), ("mask64", "mask"), ("clean", "gt")):
        (unpadded / sub).mkdir(parents=True)
        for i in range(COUNT):
            shutil.copy(padded / sub / f"{i:02d}.png", unpadded / sub / f"{prefix}_{i}.png")
    return {"root": root, "config": config, "padded": padded, "unpadded": unpadded}


def baseline_metrics(lab: dict, data: Path, out: Path, *extra: str) -> dict:
    inpainting_cli.main(["--baseline", "nearest", "--MaskGitConfig", str(lab["config"]), "--no-progress",
                     "--test-maskedimage-path", str(data / "masked_image"), "--test-mask-path", str(data / "mask64"),
                     "--output-dir", str(out), *extra])
    return json.loads((out / "metrics.json").read_text())


def test_numbered_names_are_listed_in_numeric_order_and_code_points_by_name(tmp_path):
    for name in ("image_10.png", "image_2.png", "image_1.png", "1f19a.png"):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / ("a" if name.startswith("image") else "b")).mkdir(exist_ok=True)
    for name in ("image_10.png", "image_2.png", "image_1.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "a" / name)
    for name in ("1f19a.png", "1f194.png", "1f1e6-1f1f4.png"):  # the dataset's names: test_gt.csv is in name order
        Image.new("RGB", (4, 4)).save(tmp_path / "b" / name)
    assert [p.name for p in list_images(tmp_path / "a")] == ["image_1.png", "image_2.png", "image_10.png"]
    assert [p.name for p in list_images(tmp_path / "b")] == ["1f194.png", "1f19a.png", "1f1e6-1f1f4.png"]


def test_unpadded_names_score_like_padded_ones(lab, tmp_path):
    """image_0 ... image_11 with a test_gt.csv in numeric order: the same metrics and the same
    output for each image as the zero-padded names."""
    csv = tmp_path / "test_gt.csv"
    shutil.copy(lab["padded"] / "test_gt.csv", csv)
    padded = baseline_metrics(lab, lab["padded"], tmp_path / "p", "--gt-path", str(csv))
    unpadded = baseline_metrics(lab, lab["unpadded"], tmp_path / "u", "--gt-path", str(csv))
    assert unpadded["psnr_hole"] == pytest.approx(padded["psnr_hole"])  # random images: any mix-up differs
    for i in (2, 10):  # image_2 is the third input, image_10 the eleventh
        assert np.array_equal(np.asarray(Image.open(tmp_path / "u" / "inpainted" / f"image_{i}.png")),
                              np.asarray(Image.open(tmp_path / "p" / "inpainted" / f"{i:02d}.png")))


def test_masks_and_ground_truth_are_paired_by_the_numbers_in_their_names(lab, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(lab["unpadded"], data)
    for sub in ("mask64", "clean"):  # other zero padding than the images
        for f in list(Path(data / sub).iterdir()):
            stem, number = f.stem.rsplit("_", 1)
            f.rename(f.with_name(f"{stem}{int(number):04d}.png"))
    csv = tmp_path / "test_gt.csv"
    shutil.copy(lab["padded"] / "test_gt.csv", csv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_folder = baseline_metrics(lab, data, tmp_path / "f", "--gt-path", str(data / "clean"))
    assert by_folder["psnr_hole"] == pytest.approx(baseline_metrics(lab, data, tmp_path / "c", "--gt-path",
                                                                    str(csv))["psnr_hole"])


def test_ground_truth_folder_of_unrelated_names_warns(lab, tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    for i, name in enumerate(["cat", "dog", "fox", "owl", "bee", "ant", "elk", "emu", "gnu", "hen", "yak", "jay"]):
        shutil.copy(lab["unpadded"] / "clean" / f"gt_{i}.png", gt / f"{name}.png")
    with pytest.warns(UserWarning, match=r"paired \(in file-name order\) with a ground-truth image of another name"):
        baseline_metrics(lab, lab["unpadded"], tmp_path / "out", "--gt-path", str(gt))


def test_ground_truth_of_another_size_is_resized_with_a_warning(lab, tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    for f in list_images(lab["unpadded"] / "clean"):
        Image.open(f).resize((32, 32)).save(gt / f.name)
    with pytest.warns(UserWarning, match=r"12 of 12 images in .* are not 16x16 .* resizing them to 16x16"):
        baseline_metrics(lab, lab["unpadded"], tmp_path / "out", "--gt-path", str(gt))


def test_csv_of_another_size_is_refused(lab, tmp_path):
    write_gt_csv(np.zeros((COUNT, 8, 8, 3), np.uint8), tmp_path / "small.csv")
    with pytest.raises(Exception, match="ground-truth images are 8x8, not 16x16"):
        baseline_metrics(lab, lab["unpadded"], tmp_path / "out", "--gt-path", str(tmp_path / "small.csv"))


def test_a_baseline_takes_the_labs_config(lab, tmp_path):
    """--baseline with --MaskGitConfig configs/MaskGit.yml (whose VQGAN.pt need not be there): a
    baseline uses no model, so the shipped transformer's own config does not clash with it."""
    data, out = lab["unpadded"], tmp_path / "out"
    with pytest.warns(UserWarning, match="not 64x64"):  # the tiny images, brought to the lab's size
        inpainting_cli.main(["--baseline", "nearest", "--MaskGitConfig", "configs/MaskGit.yml", "--no-progress",
                         "--test-maskedimage-path", str(data / "masked_image"), "--test-mask-path",
                         str(data / "mask64"), "--output-dir", str(out)])
    assert Image.open(out / "test_results" / "image_000.png").size == (64, 64)


@pytest.mark.parametrize("place", ["masked_image", ".", ".."])
def test_test_gt_csv_is_found_where_lab_users_keep_it(lab, tmp_path, place, capsys):
    """Beside the masked images, one folder up (dataset/test_gt.csv) or two (beside dataset/); the
    run says which file it used."""
    data = tmp_path / "lab" / "dataset"
    shutil.copytree(lab["unpadded"], data)
    csv = (data / place / "test_gt.csv").resolve()
    shutil.copy(lab["padded"] / "test_gt.csv", csv)
    metrics = baseline_metrics(lab, data, tmp_path / "out")
    assert metrics["settings"]["gt_path"] == str(csv)
    assert f"ground truth: {csv}" in capsys.readouterr().err


def test_without_test_gt_csv_the_run_says_where_it_looked(lab, tmp_path, capsys):
    inpainting_cli.main(["--baseline", "nearest", "--MaskGitConfig", str(lab["config"]), "--no-progress",
                     "--test-maskedimage-path", str(lab["unpadded"] / "masked_image"),
                     "--test-mask-path", str(lab["unpadded"] / "mask64"), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"no test_gt.csv in {lab['unpadded'] / 'masked_image'}, {lab['unpadded']}, {lab['root']}" in err
    assert "pass --gt-path" in err and not (tmp_path / "out" / "metrics.json").exists()


def test_a_partial_run_says_fid_compares_a_part(lab, tmp_path, capsys):
    csv = tmp_path / "test_gt.csv"
    shutil.copy(lab["padded"] / "test_gt.csv", csv)
    baseline_metrics(lab, lab["padded"], tmp_path / "out", "--gt-path", str(csv), "--partial", "0.5")
    assert "FID would compare these 6 images with all 12 of the ground truth" in capsys.readouterr().err


def test_the_page_gives_advice_in_its_own_words():
    import app  # gradio is imported only when the page is built
    note = ("1 of 1 masks look inverted: the mask marks 80% of the image as hole; if white marks the hole, pass "
            "--mask-hole-white (hole_white=True)")
    advice = app.in_page_words(note)
    assert "--" not in advice and "smaller brush" in advice and advice.startswith("1 of 1 masks look inverted")
