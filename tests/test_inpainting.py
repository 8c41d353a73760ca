"""End-to-end tests of inpainting.py and scripts/sweep.py on a tiny random MaskGit (16x16 images,
4x4 tokens, 16 codes) and seven images, all built in a temporary folder."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common import UserError, run_cli, save_checkpoint
from data import apply_mask, generate_mask, pixel_to_token_mask, write_gt_csv
from maskgit_inpaint import Decoding, compare_runs, load_config, load_model, run_inpainting, sweep
from maskgit_inpaint import cli as inpainting_cli
from maskgit_inpaint.blending import nearest_filled, poisson_blend
from maskgit_inpaint.decoding import decode_holes, fill_tokens
from maskgit_inpaint.preparation import open_dataset, open_ground_truth
from maskgit_inpaint.settings import TOKEN_HOLE_SHARE, TOP_P
from models.maskgit import MaskGit
from models.vqgan import VQGAN

ROOT = Path(__file__).resolve().parents[1]
SIZE, COUNT = 16, 7


def write_configs(folder: Path, dim: int = 32) -> Path:
    """Tiny VQGAN + MaskGit configs with random-init checkpoints; returns the MaskGit config path."""
    folder.mkdir(parents=True, exist_ok=True)
    vq = {"image_channels": 3, "enc_channels": [32, 32, 32, 32], "dec_channels": [32, 32, 32], "latent_dim": 8,
          "img_resolution": SIZE, "latent_resolution": 4, "num_codebook_vectors": 16, "enc_res_blocks": 1,
          "dec_res_blocks": 1, "mean": [0.6, 0.5, 0.4], "std": [0.3, 0.25, 0.2]}
    transformer = {"num_image_tokens": 16, "num_codebook_vectors": 16, "dim": dim, "n_layers": 1,
                   "hidden_dim": 64, "num_heads": 4, "dropout": 0.1}
    maskgit = {"VQ_Configs": {"VQ_config_path": str(folder / "VQGAN.yml"), "VQ_CKPT_path": str(folder / "vqgan.pt")},
               "num_image_tokens": 16, "num_codebook_vectors": 16, "choice_temperature": 4.5,
               "gamma_type": "cosine", "Transformer_param": transformer}
    (folder / "VQGAN.yml").write_text(yaml.safe_dump({"model_param": vq}))
    (folder / "MaskGit.yml").write_text(yaml.safe_dump({"model_param": maskgit}))
    torch.manual_seed(0)
    cfg = load_config(folder / "MaskGit.yml")
    model = MaskGit(cfg)
    save_checkpoint(model.vqgan.state_dict(), folder / "vqgan.pt")
    save_checkpoint({"model": model.transformer.state_dict()}, folder / "transformer.pt")
    return folder / "MaskGit.yml"


def write_dataset(folder: Path, count: int = COUNT) -> Path:
    """The lab's layout: masked_image/, mask64/ and test_gt.csv (ground truth in sorted order)."""
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    for sub in ("masked_image", "mask64", "clean"):
        (folder / sub).mkdir(parents=True)
    for i, image in enumerate(clean):
        mask = generate_mask(("box", "freeform", "center", "half")[i % 4], SIZE, i)
        Image.fromarray(apply_mask(image, mask)).save(folder / "masked_image" / f"{i:02d}.png")
        Image.fromarray(mask).save(folder / "mask64" / f"{i:02d}.png")
        Image.fromarray(image).save(folder / "clean" / f"{i:02d}.png")
    write_gt_csv(clean, folder / "test_gt.csv")
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs fastest on one thread (and does not fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    config = write_configs(root / "model")
    data = write_dataset(root / "data")
    ckpt = root / "model" / "transformer.pt"
    return {"root": root, "config": config, "ckpt": ckpt, "data": data,
            "args": ["--MaskGitConfig", str(config), "--load-transformer-ckpt-path", str(ckpt),
                     "--test-maskedimage-path", str(data / "masked_image"), "--test-mask-path", str(data / "mask64"),
                     "--device", "cpu", "--num_workers", "0", "--batch-size", "3", "--no-progress"]}


def run(tiny: dict, out: Path, *extra: str) -> Path:
    inpainting_cli.main([*tiny["args"], "--output-dir", str(out), *extra])
    return out


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def results(out: Path) -> np.ndarray:
    return np.stack([read(out / "test_results" / f"image_{i:03d}.png") for i in range(COUNT)])


@pytest.fixture(scope="module")
def default_run(tiny) -> Path:
    return run(tiny, tiny["root"] / "out", "--total-iter", "4", "--sweet-spot", "3", "--save-history")


def test_outputs_have_lab_names_and_sizes(default_run):
    names = [f"image_{i:03d}.png" for i in range(COUNT)]
    assert sorted(p.name for p in (default_run / "test_results").iterdir()) == names
    assert all(read(default_run / "test_results" / name).shape == (SIZE, SIZE, 3) for name in names)
    strip = (SIZE + 4, 4 * (SIZE + 2) + 2, 3)  # input + 3 steps in one row, 2-pixel padding
    for i in range(COUNT):
        assert read(default_run / "mask_scheduling" / f"test_{i}.png").shape == strip
        assert read(default_run / "imga" / f"test_{i}.png").shape == strip
    assert (default_run / "overview.png").is_file() and (default_run / "metrics.json").is_file()


def test_history_ends_with_the_result_and_masks_shrink(default_run):
    last = slice(3 * (SIZE + 2) + 2, 4 * (SIZE + 2))  # columns of the last frame
    frames = read(default_run / "imga" / "test_0.png")
    assert np.array_equal(frames[2:SIZE + 2, last], read(default_run / "test_results" / "image_000.png"))
    masks = read(default_run / "mask_scheduling" / "test_0.png")[2:SIZE + 2, :, 0]
    holes = [(masks[:, 2 + k * (SIZE + 2): 2 + k * (SIZE + 2) + SIZE] == 0).sum() for k in range(4)]
    assert holes[0] > 0 and holes[-1] == 0 and holes == sorted(holes, reverse=True)


def test_paste_keeps_known_pixels_and_no_paste_differs(tiny, default_run):
    pasted = results(default_run)
    raw = results(run(tiny, tiny["root"] / "raw", "--total-iter", "4", "--sweet-spot", "3", "--no-paste"))
    inputs = np.stack([read(p) for p in sorted((tiny["data"] / "masked_image").iterdir())])
    known = np.stack([read(p)[..., 0] >= 128 for p in sorted((tiny["data"] / "mask64").iterdir())])
    assert np.array_equal(pasted[known], inputs[known])
    assert not np.array_equal(raw[known], inputs[known])
    plain = results(run(tiny, tiny["root"] / "plain", "--total-iter", "4", "--sweet-spot", "3", "--blend", "none"))
    assert np.array_equal(plain[known], inputs[known])
    assert np.array_equal(raw[~known], plain[~known])  # same seed, same tokens, same decode in the hole
    assert not np.array_equal(pasted[~known], plain[~known])  # the default blends it into the known pixels


def test_poisson_blend_removes_a_smooth_colour_error():
    """A decode that is the image plus a harmonic error (a constant per channel and a ramp) is
    brought back exactly to the image in the hole; known pixels are not touched by the blend."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    ramp = torch.linspace(-0.5, 0.5, 12, dtype=torch.float64)
    decoded = images + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)[:, None, None] + ramp[None, :, None]
    holes = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
    holes[0, :, 3:9, 2:6] = True
    holes[1, :, 3:9, 0:5] = True  # against the left border, along which the ramp runs
    blended = poisson_blend(decoded, images, holes)
    assert torch.allclose(blended.where(holes, images), images)
    assert torch.equal(blended[~holes.expand_as(blended)], decoded[~holes.expand_as(decoded)])


def test_metrics_are_finite(default_run):
    metrics = json.loads((default_run / "metrics.json").read_text())
    for key in ("psnr", "psnr_hole", "ssim", "l1_hole", "masked_token_accuracy", "images_per_second"):
        assert math.isfinite(metrics[key]), key
    assert metrics["images"] == COUNT
    assert metrics["settings"]["total_iter"] == 4 and metrics["settings"]["sweet_spot"] == 3
    assert metrics["settings"]["gt_path"].endswith("test_gt.csv")  # found beside masked_image/


def test_same_seed_same_outputs(tiny, default_run):
    again = run(tiny, tiny["root"] / "again", "--total-iter", "4", "--sweet-spot", "3", "--batch-size", "7")
    assert np.array_equal(results(again), results(default_run))
    # sampled tokens show the seed (the tiny random model's mean readout hardly depends on them)
    sampled = ("--total-iter", "4", "--sweet-spot", "3", "--readout", "sample")
    seed0 = run(tiny, tiny["root"] / "seed0", *sampled)
    assert np.array_equal(results(run(tiny, tiny["root"] / "seed0_again", *sampled, "--batch-size", "7")),
                          results(seed0))
    other = run(tiny, tiny["root"] / "other", *sampled, "--random-seed", "1")
    assert not np.array_equal(results(other), results(seed0))


def test_tokens_do_not_depend_on_batch_size(tiny):
    cfg = load_config(tiny["config"])
    model = load_model(tiny["config"], tiny["ckpt"], torch.device("cpu"))
    dataset = open_dataset(tiny["data"] / "masked_image", tiny["data"] / "mask64", cfg)
    images, holes, indices = (torch.utils.data.default_collate([dataset[i] for i in range(COUNT)]))
    token_mask = pixel_to_token_mask(holes, 4)
    _, z = model.encode_to_z(images)
    decoding = Decoding(total_iter=6, sweet_spot=6)
    together = fill_tokens(model, z, token_mask, indices, decoding, 6).tokens
    alone = torch.cat([fill_tokens(model, z[i:i + 1], token_mask[i:i + 1], indices[i:i + 1], decoding,
                                              6).tokens for i in range(COUNT)])
    assert (together == alone).float().mean() >= 0.99


def with_known_pixels(model: MaskGit) -> MaskGit:
    """`model` with a known-pixel decoder (models.vqgan.KnownPixels) whose output convolutions are
    random instead of zero, so that what it sees changes the decode."""
    vqgan = VQGAN({**model.vqgan.cfg, "known_pixels": True})
    vqgan.load_state_dict({**vqgan.state_dict(), **model.vqgan.state_dict()})
    torch.manual_seed(0)
    for conv in vqgan.known_pixels.out:
        torch.nn.init.normal_(conv.weight, std=0.2)
    model.vqgan = vqgan.eval().requires_grad_(False)
    return model


@pytest.mark.parametrize("known_pixels", [False, True])
def test_flip_average_is_the_mean_of_the_image_and_its_mirror_decoded_apart(tiny, known_pixels):
    cfg = load_config(tiny["config"])
    model = load_model(tiny["config"], tiny["ckpt"], torch.device("cpu"))
    if known_pixels:  # each view's decode sees its own known pixels: the mirror view the mirrored ones
        model = with_known_pixels(model)
    dataset = open_dataset(tiny["data"] / "masked_image", tiny["data"] / "mask64", cfg)
    images, holes, indices = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    decoding = Decoding(total_iter=3, sweet_spot=3, readout="sample", flip_average=False)
    plain, tokens, _, _ = decode_holes(model, images, holes, indices, decoding)
    mirror = decode_holes(model, images.flip(-1), holes.flip(-1), indices, decoding)[0].flip(-1)
    averaged, averaged_tokens, _, histories = decode_holes(
        model, images, holes, indices, replace(decoding, flip_average=True), history=True)
    torch.testing.assert_close(averaged, (plain + mirror) / 2)
    assert torch.equal(averaged[~holes.expand_as(images)], images[~holes.expand_as(images)])  # known pixels kept
    assert torch.equal(averaged_tokens, tokens) and len(histories) == 2
    assert not torch.allclose(plain, mirror)  # the tiny model is not mirror-symmetric: the test has teeth


def test_token_hole_share_keeps_the_pre_filled_codes_of_mostly_known_tokens(tiny):
    cfg = load_config(tiny["config"])
    model = load_model(tiny["config"], tiny["ckpt"], torch.device("cpu"))
    dataset = open_dataset(tiny["data"] / "masked_image", tiny["data"] / "mask64", cfg)
    images, holes, indices = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    holes = torch.zeros_like(holes)
    holes[:, :, 0:4, 0:3] = True  # 12 of the 16 pixels of token 0
    holes[:, :, 5, 4:8] = True  # 4 of the 16 pixels of token 5
    decoding = Decoding(total_iter=2, readout="sample", flip_average=False, blend="none", token_hole_share=0.25)
    decoded, tokens, token_mask, _ = decode_holes(model, images, holes, indices, decoding)
    assert token_mask.sum(1).tolist() == [1] * 4 and token_mask[:, 0].all()
    _, prefilled = model.encode_to_z(nearest_filled(images, holes))
    assert torch.equal(tokens[:, 1:], prefilled[:, 1:])  # kept: the pre-filled image's codes
    assert torch.equal(decode_holes(model, images, holes, indices, replace(decoding, token_hole_share=0.0))[2][:, 5],
                       torch.ones(4, dtype=torch.bool))  # at 0 any hole pixel regenerates its token
    # left unset, the share follows the readout: token 0 (three quarters hole) is regenerated for the
    # mean readout (0.5) and keeps its pre-filled code for sampled tokens (0.75: not more than that)
    for readout, regenerated in (("mean", True), ("sample", False)):
        unset = replace(decoding, readout=readout, token_hole_share=None)
        assert unset.hole_share == TOKEN_HOLE_SHARE[readout]
        assert decode_holes(model, images, holes, indices, unset)[2][:, 0].tolist() == [regenerated] * 4
        assert unset.resolved("cosine", 4.5, 16)[0].token_hole_share == TOKEN_HOLE_SHARE[readout]
        assert replace(unset, top_p=None).resolved("cosine", 4.5, 16)[0].top_p == TOP_P[readout]
        assert replace(unset, top_p=0.3).resolved("cosine", 4.5, 16)[0].top_p == 0.3
    small = torch.zeros_like(holes)
    small[:, :, 5, 5] = True  # no token is more than a quarter hole: nothing to regenerate
    decoded, tokens, token_mask, _ = decode_holes(model, images, small, indices, decoding)
    assert not token_mask.any() and torch.equal(tokens, model.encode_to_z(nearest_filled(images, small))[1])
    known = ~small.expand_as(images)
    assert torch.equal(decoded[known], images[known]) and torch.isfinite(decoded).all()


@pytest.mark.parametrize("readout, flip_average", [("sample", False), ("mean", False), ("mean", True)])
def test_early_sweet_spots_equal_separate_runs(tiny, readout, flip_average):
    """The sweep scores every sweet spot from one run; each must equal a run stopped there."""
    cfg = load_config(tiny["config"])
    model = load_model(tiny["config"], tiny["ckpt"], torch.device("cpu"))
    dataset = open_dataset(tiny["data"] / "masked_image", tiny["data"] / "mask64", cfg)
    mean, std = cfg["vqgan"]["mean"], cfg["vqgan"]["std"]
    gt = open_ground_truth(tiny["data"] / "test_gt.csv", COUNT, 16)
    decoding = Decoding(total_iter=6, sweet_spot=6, readout=readout, flip_average=flip_average)
    full = run_inpainting(dataset, model, decoding, mean, std, torch.device("cpu"), 4, gt=gt,
                                     progress=False, early_spots=[2, 5, 6])
    for spot in (2, 5):
        alone = run_inpainting(dataset, model, replace(decoding, sweet_spot=spot), mean, std,
                                          torch.device("cpu"), 4, gt=gt, progress=False)
        early = full.at_sweet_spot(spot)
        assert np.array_equal(early.outputs, alone.outputs) and early.token_hits == alone.token_hits
    assert np.array_equal(full.at_sweet_spot(6).outputs, full.outputs)
    if readout == "sample":  # the tiny random model's mean readout hardly changes between steps
        assert not np.array_equal(full.at_sweet_spot(2).outputs, full.outputs)


def test_mean_fill_baseline(tiny):
    out = run(tiny, tiny["root"] / "baseline", "--baseline", "mean-fill",
              "--load-transformer-ckpt-path", "missing.pt")  # the baseline needs no transformer
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["method"] == "mean-fill" and "masked_token_accuracy" not in metrics
    assert math.isfinite(metrics["psnr_hole"])
    image = read(out / "test_results" / "image_000.png")
    hole = read(tiny["data"] / "mask64" / "00.png")[..., 0] < 128
    assert len(np.unique(image[hole], axis=0)) == 1


def test_compare_runs_puts_runs_side_by_side_and_refuses_partial_ones(tiny, monkeypatch):
    baseline = tiny["root"] / "baseline"
    if not (baseline / "metrics.json").exists():
        test_mean_fill_baseline(tiny)
    truth = np.zeros((4, 4, 3), np.uint8)
    hole = np.zeros((4, 4), bool)
    hole[:2] = True
    off = truth.copy()
    off[hole] += 10
    off[~hole] += 99  # outside the hole: not counted
    assert compare_runs.hole_psnr(off, truth, hole) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    drawn = []
    monkeypatch.setattr(compare_runs, "hole_psnr", lambda *a: drawn.append(a) or 10.0)
    out = tiny["root"] / "compare.png"
    compare_runs.main(["--runs", str(baseline), str(baseline), "--labels", "a", "b", "--masked",
                       str(tiny["data"] / "masked_image"), "--masks", str(tiny["data"] / "mask64"),
                       "--gt-path", str(tiny["data"] / "test_gt.csv"), "--images", "3", "--out", str(out)])
    assert read(out).shape[0] > 3 * SIZE and len(drawn) == 3 * 2  # 3 rows, 2 runs each
    gt = open_ground_truth(tiny["data"] / "test_gt.csv", COUNT, SIZE)
    assert np.array_equal(drawn[0][1], gt[0]) and np.array_equal(drawn[0][0], read(baseline / "test_results" /
                                                                                  "image_000.png"))
    (tiny["root"] / "partial" / "test_results").mkdir(parents=True)
    with pytest.raises(UserError, match="results missing"):
        compare_runs.main(["--runs", str(tiny["root"] / "partial"), "--gt-path", str(tiny["data"] / "test_gt.csv"),
                           "--masks", str(tiny["data"] / "mask64"), "--out", str(out)])


def test_single_image_modes(tiny):
    clean = tiny["data"] / "clean" / "03.png"
    out = run(tiny, tiny["root"] / "single", "--image", str(clean), "--mask-kind", "center")
    assert read(out / "test_results" / "image_000.png").shape == (SIZE, SIZE, 3)
    assert json.loads((out / "metrics.json").read_text())["images"] == 1  # the clean image is the ground truth
    out = run(tiny, tiny["root"] / "single_mask", "--image", str(tiny["data"] / "masked_image" / "01.png"),
              "--mask", str(tiny["data"] / "mask64" / "01.png"))
    known = read(tiny["data"] / "mask64" / "01.png")[..., 0] >= 128
    image, masked = read(out / "test_results" / "image_000.png"), read(tiny["data"] / "masked_image" / "01.png")
    assert np.array_equal(image[known], masked[known])
    assert not (out / "metrics.json").exists()


def test_sweet_spot_above_total_iter_is_clamped(tiny, capsys):
    out = run(tiny, tiny["root"] / "clamped", "--total-iter", "2", "--sweet-spot", "5", "--partial", "0.3")
    assert "warning: --sweet-spot 5 is larger than --total-iter 2; using 2" in capsys.readouterr().err
    assert len(list((out / "test_results").iterdir())) == 3  # ceil(0.3 * 7)


def bad_input_cases(tiny: dict) -> dict[str, tuple[list[str], str]]:
    data = tiny["data"]
    short = tiny["root"] / "short_masks"
    if not short.exists():
        short.mkdir()
        for p in sorted((data / "mask64").iterdir())[:-1]:
            (short / p.name).write_bytes(p.read_bytes())
    wide = tiny["root"] / "wide" / "MaskGit.yml"
    if not wide.exists():
        write_configs(wide.parent, dim=64)
    odd = tiny["root"] / "odd"
    if not odd.exists():
        odd.mkdir()
        Image.new("RGB", (32, 16)).save(odd / "a.png")
        edge = np.full((16, 32), 255, dtype=np.uint8)
        edge[:, :4] = 0  # a hole outside the centre square
        Image.fromarray(edge).save(odd / "edge.png")
    odd_folder = tiny["root"] / "odd_folder"
    if not odd_folder.exists():
        for name in ("masked", "masks"):
            (odd_folder / name).mkdir(parents=True)
        (odd_folder / "masked" / "a.png").write_bytes((odd / "a.png").read_bytes())
        (odd_folder / "masks" / "edge.png").write_bytes((odd / "edge.png").read_bytes())
    few = tiny["root"] / "few_gt"
    if not few.exists():
        few.mkdir()
        for p in sorted((data / "clean").iterdir())[:3]:
            (few / p.name).write_bytes(p.read_bytes())
    return {
        "missing checkpoint": (["--load-transformer-ckpt-path", "nope.pt"], "transformer checkpoint not found"),
        "missing config": (["--MaskGitConfig", "nope.yml"], "config not found"),
        "token hole share of 1": (["--token-hole-share", "1"], "at 1 no token is regenerated"),
        "negative token hole share": (["--token-hole-share", "-0.5"], "--token-hole-share (token_hole_share)"),
        "top-p of 0": (["--top-p", "0"], "at 0 no code could be drawn"),
        "top-p above 1": (["--top-p", "1.5"], "--top-p (top_p)"),
        "shape mismatch": (["--load-transformer-ckpt-path", str(wide.parent / "transformer.pt")], "shape mismatch"),
        "mask count": (["--test-mask-path", str(short)], "7 masked images"),
        "hole outside crop": (["--image", str(odd / "a.png"), "--mask", str(odd / "edge.png"), "--fit", "crop"],
                              "the hole reaches outside the centre square"),
        "folder hole outside crop": (["--test-maskedimage-path", str(odd_folder / "masked"), "--test-mask-path",
                                      str(odd_folder / "masks"), "--fit", "crop"],
                                     "the hole reaches outside the centre square that --fit crop keeps of edge.png"),
        "mask func": (["--mask-func", "nope"], "valid: linear, cosine"),
        "mask kind": (["--image", str(data / "clean" / "00.png"), "--mask-kind", "blob"], "freeform, box"),
        "cuda": (["--device", "cuda"], "CUDA is not available"),
        "bad flag value": (["--total-iter", "x"], "invalid int value"),
        "gt count": (["--gt-path", str(few)], "holds 3 ground-truth images but there are 7 inputs"),
        "image without mask": (["--image", str(data / "clean" / "00.png")], "exactly one of --mask"),
    }


CASES = ["missing checkpoint", "missing config", "shape mismatch", "mask count", "hole outside crop", "mask func",
         "mask kind", "cuda", "bad flag value", "gt count", "image without mask", "token hole share of 1",
         "negative token hole share"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line(tiny, case, capsys):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args, needle = bad_input_cases(tiny)[case]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: inpainting_cli.main([*tiny["args"], "--output-dir", str(tiny["root"] / "bad"), *args]))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_cli_bad_input_exits_2_without_traceback(tiny):
    result = subprocess.run([sys.executable, "inpainting.py", *tiny["args"], "--mask-func", "nope"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown --mask-func 'nope'; valid: linear, cosine, square, cubic, sqrt, log, exp"]


def test_sweep_writes_csv_and_plot(tiny, monkeypatch, capsys):
    monkeypatch.delenv("FID_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tiny["root"] / "torch_home"))  # no Inception weights there
    out = tiny["root"] / "sweep"
    sweep.main([*tiny["args"], "--out-dir", str(out), "--mask-funcs", "cosine", "linear", "--total-iters", "3",
                "--sweet-spots", "1", "3", "5"])
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mask_func"], r["total_iter"], r["sweet_spot"]) for r in rows] == [
        ("cosine", "3", "1"), ("cosine", "3", "3"), ("linear", "3", "1"), ("linear", "3", "3")]
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("psnr_hole", "ssim", "masked_token_accuracy"))
    assert "fid" not in rows[0] and "FID skipped" in capsys.readouterr().err
    assert (out / "sweep.png").stat().st_size > 0


def test_sweep_adds_fid_when_weights_are_there(tiny, monkeypatch):
    weights = tiny["root"] / "inception.pth"
    weights.write_bytes(b"stand-in")
    calls = []
    monkeypatch.setattr(sweep, "load_inception", lambda path, device: f"inception from {path.name}")
    monkeypatch.setattr(sweep, "compute_fid", lambda pred, gt, **kw: calls.append((pred.shape, gt, kw)) or 12.5)
    out = tiny["root"] / "sweep_fid"
    sweep.main([*tiny["args"], "--out-dir", str(out), "--mask-funcs", "cosine", "--total-iters", "2",
                "--sweet-spots", "2", "--inception-weights", str(weights)])
    with open(out / "sweep.csv", newline="") as f:
        assert [row["fid"] for row in csv.DictReader(f)] == ["12.5"]
    (shape, gt, kw), = calls
    assert shape == (COUNT, SIZE, SIZE, 3) and gt == tiny["data"] / "test_gt.csv"  # whole set: fid caches its stats
    assert kw["model"] == "inception from inception.pth"


def test_precision_flag_is_recorded_and_bf16_stays_close(tiny, default_run):
    out = run(tiny, tiny["root"] / "bf16", "--total-iter", "4", "--sweet-spot", "3", "--precision", "bf16")
    metrics = json.loads((out / "metrics.json").read_text())
    fp32 = json.loads((default_run / "metrics.json").read_text())
    assert metrics["settings"]["precision"] == "bf16" and fp32["settings"]["precision"] == "fp32"
    assert abs(metrics["psnr_hole"] - fp32["psnr_hole"]) < 1.0


def test_halton_scheduler_from_the_command_line(tiny):
    steps = ("--total-iter", "4", "--readout", "sample", "--partial", "0.3")  # one step has no order to choose
    out = run(tiny, tiny["root"] / "halton", "--scheduler", "halton", *steps)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["scheduler"] == "halton"
    confidence = run(tiny, tiny["root"] / "confidence", *steps)
    assert not all(np.array_equal(read(out / "test_results" / f.name), read(f))
                   for f in sorted((confidence / "test_results").iterdir()))


def test_nearest_filled_gives_each_hole_pixel_a_nearest_known_value():
    torch.manual_seed(0)
    images = torch.randn(3, 3, 8, 8)
    holes = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    holes[0, 0, 2:6, 1:5] = True
    holes[1, 0, :, :3] = True
    holes[2] = True  # nothing known: left as it is
    filled = nearest_filled(images, holes)
    assert torch.equal(filled[~holes.expand_as(images)], images[~holes.expand_as(images)])
    assert torch.equal(filled[2], images[2])
    for b in (0, 1):
        known = (~holes[b, 0]).nonzero().float()  # (K, 2)
        for y, x in holes[b, 0].nonzero().tolist():
            distances = (known - torch.tensor([y, x]).float()).norm(dim=1)
            # the value comes from a known pixel at the smallest distance (ties: any of them)
            sources = known[distances == distances.min()].long()
            assert any(torch.equal(filled[b, :, y, x], images[b, :, r, c]) for r, c in sources.tolist())
