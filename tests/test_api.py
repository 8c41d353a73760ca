"""Your own image in, your own image out: the mask rules (alpha, white-hole, inverted), any image
size (resize or centre crop, given back at the input's size with the known pixels exact), the
Python API inpaint() against the CLI, the labelled steps, and exported model folders (digests,
the shipped model, a VQGAN the transformer was not trained on)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_inpainting import SIZE, one_thread, write_configs  # noqa: F401 (an autouse fixture)

from common import REPO_ROOT, UserError, load_checkpoint, read_safetensors, run_cli
from data import normalize
from data.masks import fit_hole, read_hole
from maskgit_inpaint import Decoding, inpaint, run_inpainting
from maskgit_inpaint import cli as inpainting_cli
from maskgit_inpaint.figures import steps_figure
from maskgit_inpaint.preparation import prepare_image
from models.config import load_maskgit_config, load_vqgan_config
from models.convert import convert
from models.maskgit import MaskGit
from models.pretrained import (
    DEFAULT_CONFIG,
    DEFAULT_MODEL,
    DEFAULT_VQGAN_CONFIG,
    known_pixels_parent,
    maskgit_config,
    read_description,
    vqgan_path_of,
    weights_digest,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny random MaskGit as plain .pt files and as exported folders, and a 40x24 photo with a hole."""
    root = tmp_path_factory.mktemp("api")
    config = write_configs(root / "model")
    convert("vqgan", root / "model" / "vqgan.pt", root / "model" / "VQGAN.yml", root / "vqgan_export")
    convert("maskgit", root / "model" / "transformer.pt", config, root / "export", vqgan=root / "vqgan_export")
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    mask = np.full((24, 40), 255, dtype=np.uint8)
    mask[8:14, 12:30] = 0  # black = hole
    Image.fromarray(photo).save(root / "photo.png")
    Image.fromarray(mask).save(root / "photo_mask.png")
    return {"root": root, "config": config, "photo": photo, "hole": mask == 0,
            "model": MaskGit.from_pretrained(root / "export")}


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ----------------------------------------------------------------------------- mask rules

def test_mask_rules_alpha_white_and_bool():
    gray = np.full((4, 4), 255, dtype=np.uint8)
    gray[0, :2] = 0
    assert read_hole(gray).sum() == 2 and read_hole(gray)[0, :2].all()      # black = hole
    assert read_hole(gray, hole_white=True).sum() == 14                     # white = hole
    layer = np.zeros((4, 4, 4), dtype=np.uint8)                             # transparent = known
    layer[1, 1:3] = (255, 0, 255, 255)                                      # painted = hole, whatever its colour
    assert np.array_equal(np.argwhere(read_hole(layer)), [[1, 1], [1, 2]])
    assert np.array_equal(np.argwhere(read_hole(Image.fromarray(layer, "RGBA"))), [[1, 1], [1, 2]])
    opaque = np.dstack([np.dstack([gray] * 3), np.full((4, 4), 255, np.uint8)])  # no transparency: by gray level
    assert read_hole(opaque).sum() == 2
    assert read_hole(np.eye(4, dtype=bool)).sum() == 4


def test_downscaled_hole_keeps_a_thin_stroke():
    hole = np.zeros((480, 640), dtype=bool)
    hole[100, :] = True  # one pixel high
    small = fit_hole(hole, (64, 64))
    assert small.shape == (64, 64) and small.any(axis=1).sum() >= 1 and small.any(axis=0).all()
    assert fit_hole(hole, (64, 64), "crop")[:, :].any(axis=0).all()


def test_inverted_mask_warns(tiny, tmp_path):
    inverted = np.where(tiny["hole"], 255, 0).astype(np.uint8)  # white = hole, read as black = hole
    with pytest.warns(UserWarning, match="look inverted: the mask marks 89% of the image as hole; if white marks"):
        inpaint(tiny["photo"], inverted, tiny["model"], total_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*resized to 16x16")
        same = inpaint(tiny["photo"], inverted, tiny["model"], total_iter=2, hole_white=True)
    expected = inpaint(tiny["photo"], tiny["hole"], tiny["model"], total_iter=2)
    assert np.array_equal(same.image, expected.image)


# ----------------------------------------------------------------------------- any size, API and CLI

def test_any_size_is_given_back_with_known_pixels_exact(tiny):
    with pytest.warns(UserWarning, match="40x24: resized to 16x16 for the model; the result is also given at 40x24"):
        result = inpaint(tiny["photo"], tiny["hole"], tiny["model"], total_iter=4)
    hole = tiny["hole"]
    assert result.image.shape == (24, 40, 3) and result.model_image.shape == (SIZE, SIZE, 3)
    assert np.array_equal(result.image[~hole], tiny["photo"][~hole])
    assert (result.image[hole] != tiny["photo"][hole]).any(axis=-1).mean() > 0.5
    raw = inpaint(tiny["photo"], tiny["hole"], tiny["model"], total_iter=4, paste=False)
    assert not np.array_equal(raw.image[~hole], tiny["photo"][~hole])


def test_crop_keeps_everything_outside_the_hole(tiny):
    hole = np.zeros((24, 40), dtype=bool)
    hole[10:14, 18:22] = True
    result = inpaint(tiny["photo"], hole, tiny["model"], total_iter=3, fit="crop")
    assert np.array_equal(result.image[~hole], tiny["photo"][~hole])
    assert not np.array_equal(result.image[hole], tiny["photo"][hole])
    edge = np.zeros((24, 40), dtype=bool)
    edge[:, :3] = True  # outside the centre 24x24 square
    with pytest.raises(UserError, match="reaches outside the centre square"):
        inpaint(tiny["photo"], edge, tiny["model"], fit="crop")


def test_steps_are_labelled_and_end_with_the_result(tiny):
    result = inpaint(tiny["photo"], tiny["hole"], tiny["model"], total_iter=6, sweet_spot=4, token_hole_share=0,
                     return_steps=True)  # every token the hole touches is masked
    masked = [s.masked for s in result.steps]
    assert [s.step for s in result.steps] == [0, 1, 2, 3, 4]
    assert masked[0] == result.steps[0].token_mask.sum() > 0 and masked[-1] == 0
    assert masked == sorted(masked, reverse=True) and len(set(masked)) == len(masked)
    assert result.steps[2].label == f"step 2: {masked[2]} tokens masked"
    assert np.array_equal(result.steps[-1].image, result.model_image)
    first = result.steps[0]  # the input, hole painted gray
    model_hole = fit_hole(tiny["hole"], (SIZE, SIZE))
    assert (first.image[model_hole] == 128).all()
    figure = steps_figure(result.steps, gt=result.model_image)
    assert figure.dtype == np.uint8 and figure.shape[1] > figure.shape[0] > 150


def test_cli_single_image_matches_the_api_and_keeps_the_name(tiny, tmp_path):
    out = tmp_path / "one"
    inpainting_cli.main(["--load-transformer-ckpt-path", str(tiny["root"] / "export"), "--image",
                     str(tiny["root"] / "photo.png"), "--mask", str(tiny["root"] / "photo_mask.png"),
                     "--total-iter", "4", "--output-dir", str(out), "--device", "cpu", "--no-progress",
                     "--save-history", "--num_workers", "0"])
    api = inpaint(tiny["root"] / "photo.png", tiny["root"] / "photo_mask.png", tiny["model"],
                             total_iter=4)
    assert np.array_equal(read(out / "test_results" / "image_000.png"), api.model_image)
    assert np.array_equal(read(out / "inpainted" / "photo.png"), api.image)
    figure = read(out / "steps" / "test_0.png")
    assert figure.shape[1] > 5 * SIZE  # 5 labelled columns, larger than the unlabelled strip
    assert read(out / "imga" / "test_0.png").shape == (SIZE + 4, 5 * (SIZE + 2) + 2, 3)


@pytest.mark.parametrize("flags, options", [
    (["--scheduler", "halton", "--encode-fill", "gray", "--no-flip-average", "--sample-temperature", "0"],
     {"scheduler": "halton", "encode_fill": "gray", "flip_average": False, "sample_temperature": 0.0}),
    (["--baseline", "harmonic"], {"method": "harmonic"}),
])
def test_inpaint_takes_every_option_the_cli_does(tiny, tmp_path, flags, options):
    """inpaint()'s keyword arguments are the fields of Decoding, the same settings as the CLI's flags."""
    out = tmp_path / "one"
    inpainting_cli.main(["--load-transformer-ckpt-path", str(tiny["root"] / "export"), "--image",
                     str(tiny["root"] / "photo.png"), "--mask", str(tiny["root"] / "photo_mask.png"),
                     "--total-iter", "3", "--output-dir", str(out), "--device", "cpu", "--no-progress",
                     "--num_workers", "0", *flags])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*resized to 16x16")
        api = inpaint(tiny["root"] / "photo.png", tiny["root"] / "photo_mask.png", tiny["model"], total_iter=3,
                      **options)
        default = inpaint(tiny["root"] / "photo.png", tiny["root"] / "photo_mask.png", tiny["model"], total_iter=3)
    assert np.array_equal(read(out / "inpainted" / "photo.png"), api.image)
    assert not np.array_equal(api.image, default.image)  # the options did change the result
    with pytest.raises(UserError, match="unknown inpaint\\(\\) option\\(s\\) rings"):
        inpaint(tiny["photo"], tiny["hole"], tiny["model"], rings=1)


def test_sweet_spot_follows_t_unless_set_and_is_clamped_once(tiny):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*resized to 16x16")
        follows = inpaint(tiny["photo"], tiny["hole"], tiny["model"], total_iter=5, return_steps=True)
        assert follows.steps[-1].step == 5
        with pytest.warns(UserWarning, match="--sweet-spot 9 is larger than --total-iter 3; using 3"):
            clamped = inpaint(tiny["photo"], tiny["hole"], tiny["model"], total_iter=3, sweet_spot=9,
                              return_steps=True)
    assert clamped.steps[-1].step == 3
    assert Decoding(total_iter=4).steps == 4 and Decoding(total_iter=4, sweet_spot=2).steps == 2


def test_folder_mode_keeps_file_names_at_their_size(tiny, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(tiny["photo"]).save(images / "cat.png")
    Image.fromarray(np.where(tiny["hole"], 0, 255).astype(np.uint8)).save(masks / "cat.png")
    Image.fromarray(tiny["photo"][:16, :16]).save(images / "dog.png")
    Image.fromarray(np.where(tiny["hole"][:16, :16], 0, 255).astype(np.uint8)).save(masks / "dog.png")
    out = tmp_path / "out"
    inpainting_cli.main(["--load-transformer-ckpt-path", str(tiny["root"] / "export"), "--test-maskedimage-path",
                     str(images), "--test-mask-path", str(masks), "--output-dir", str(out), "--device", "cpu",
                     "--no-progress", "--num_workers", "0"])
    cat, dog = read(out / "inpainted" / "cat.png"), read(out / "inpainted" / "dog.png")
    assert cat.shape == (24, 40, 3) and dog.shape == (16, 16, 3)
    assert np.array_equal(cat[~tiny["hole"]], tiny["photo"][~tiny["hole"]])
    assert np.array_equal(dog, read(out / "test_results" / "image_001.png"))  # 16x16: the model's own result


def test_overview_input_shows_the_hole(tiny):
    prepared = prepare_image(tiny["root"] / "photo.png", tiny["hole"], SIZE)
    item = [(normalize(prepared.pixels, *(tiny["model"].vqgan.cfg[k] for k in ("mean", "std"))),
             torch.from_numpy(prepared.model_hole)[None], 0)]
    cfg = tiny["model"].vqgan.cfg
    result = run_inpainting(item, tiny["model"], Decoding(total_iter=2, sweet_spot=2),
                                       cfg["mean"], cfg["std"], torch.device("cpu"), 1, progress=False)
    assert (result.inputs[0][prepared.model_hole] == 128).all()


@pytest.mark.parametrize("image, mask, message", [
    ("missing.png", None, "image not found"),
    (np.zeros((4, 4, 3)), None, "an image array must be uint8"),
    (None, np.zeros(5, dtype=np.uint8), "a mask array must be"),
    (None, "missing_mask.png", "mask not found"),
    (None, np.ones((24, 40), dtype=bool), "entirely hole"),
])
def test_api_bad_input_is_one_user_error(tiny, image, mask, message):
    with pytest.raises(UserError, match=message):
        inpaint(tiny["photo"] if image is None else image, tiny["hole"] if mask is None else mask,
                           tiny["model"])


# ----------------------------------------------------------------------------- exported folders

def test_export_digest_survives_the_format_and_another_vqgan_is_refused(tiny, tmp_path, capsys):
    meta = read_description(tiny["root"] / "export", "maskgit")
    plain = load_checkpoint(tiny["root"] / "model" / "vqgan.pt")
    assert meta["vqgan"]["digest"] == weights_digest(plain) == weights_digest(read_safetensors(
        tiny["root"] / "vqgan_export"))
    assert meta["vqgan"]["digest"] != weights_digest({k: v + 1e-2 for k, v in plain.items()})
    other = tmp_path / "other.pt"
    torch.save({k: v + 0.5 if v.is_floating_point() else v for k, v in plain.items()}, other)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: inpainting_cli.main(["--load-transformer-ckpt-path", str(tiny["root"] / "export"), "--vqgan",
                                         str(other), "--image", str(tiny["root"] / "photo.png"), "--mask-kind",
                                         "box", "--output-dir", str(tmp_path / "o"), "--device", "cpu"]))
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert exit_info.value.code == 2 and len(err) == 1
    assert f"{tiny['root'] / 'export'} was trained on another VQGAN than {other}" in err[0]
    # the same weights as a lab-style .pt are accepted (same digest)
    assert isinstance(MaskGit.from_pretrained(tiny["root"] / "export", tiny["root"] / "model" / "vqgan.pt"), MaskGit)


def test_shipped_model_is_self_describing():
    meta = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert meta["kind"] == "maskgit" and meta["config"]["vqgan"]["img_resolution"] == 64
    assert "CC-BY 4.0" in meta["data"]["credits"]
    # the transformer's tokens came from vqgan_local; it decodes with vqgan_known, a known-pixel fit of it
    assert vqgan_path_of(DEFAULT_MODEL) == REPO_ROOT / "checkpoints" / "vqgan_known"
    assert known_pixels_parent(vqgan_path_of(DEFAULT_MODEL)) == meta["vqgan"]["digest"]
    tokens_only = MaskGit.from_pretrained(vqgan=REPO_ROOT / "checkpoints" / "vqgan_local")
    assert weights_digest(tokens_only.vqgan.state_dict()) == meta["vqgan"]["digest"]


def test_the_default_known_pixel_vqgan_keeps_the_tokens_of_the_vqgan_the_transformer_trained_on():
    plain = MaskGit.from_pretrained(DEFAULT_MODEL, vqgan=REPO_ROOT / "checkpoints" / "vqgan_local")
    known = MaskGit.from_pretrained(DEFAULT_MODEL)
    assert plain.vqgan.known_pixels is None and known.vqgan.known_pixels is not None
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(plain.encode_to_z(images)[1], known.encode_to_z(images)[1])


def test_default_configs_are_the_shipped_models_recipe():
    """The training scripts' default configs (and a plain .pt's) build the default model and its VQGAN."""
    shipped, recipe = maskgit_config(DEFAULT_MODEL), load_maskgit_config(REPO_ROOT / DEFAULT_CONFIG)
    assert {k: v for k, v in recipe.items() if k != "VQ_Configs"} == shipped
    assert recipe["VQ_Configs"]["VQ_config_path"] == DEFAULT_VQGAN_CONFIG
    assert load_vqgan_config(REPO_ROOT / DEFAULT_VQGAN_CONFIG) == shipped["vqgan"]


def test_the_l2_recipe_is_the_default_recipe_on_the_shipped_l2_vqgan():
    """configs/small/MaskGit_l2.yml trains the default transformer on checkpoints/vqgan_l2's unit codes."""
    from models.maskgit import load_maskgit
    from training.vqgan import validate  # the reconstruction PSNR of training_vqgan.py --evaluate

    recipe = load_maskgit_config(REPO_ROOT / "configs/small/MaskGit_l2.yml")
    local = load_maskgit_config(REPO_ROOT / DEFAULT_CONFIG)
    assert {k: v for k, v in recipe.items() if k not in ("VQ_Configs", "vqgan")} == \
        {k: v for k, v in local.items() if k not in ("VQ_Configs", "vqgan")}
    assert recipe["vqgan"] == load_vqgan_config(REPO_ROOT / "configs/small/VQGAN_l2.yml")
    vqgan = load_maskgit(recipe).vqgan  # its VQ_CKPT_path, the shipped checkpoints/vqgan_l2
    cat = Image.open(REPO_ROOT / "docs" / "cat.png").convert("RGB").resize((64, 64), Image.BICUBIC)  # from 256x256
    cat = np.array(cat)[None]  # (1, 64, 64, 3)
    images = normalize(cat, vqgan.cfg["mean"], vqgan.cfg["std"])
    with torch.no_grad():
        z_q = vqgan.encode(images)[0]  # (1, 8, 16, 16)
        psnr, _ = validate(vqgan, [images], torch.device("cpu"), vqgan.cfg["mean"], vqgan.cfg["std"], None)
    assert torch.allclose(z_q.norm(dim=1), torch.ones(1, 16, 16), atol=1e-5)  # decoded from unit codes
    assert psnr > 24  # 24.7 dB; the untrained VQGAN gets 11.1


@pytest.mark.parametrize("field, prop, table", [("token_hole_share", "hole_share", "TOKEN_HOLE_SHARE"),
                                                ("top_p", "nucleus", "TOP_P")])
def test_page_readout_defaults_start_at_the_default_and_follow_the_readout(field, prop, table):
    """The page's sliders of the readout-dependent settings show the value the library would use, and
    picking a readout moves each to that readout's default (the event's own function, as gradio calls it)."""
    pytest.importorskip("gradio")
    from types import SimpleNamespace

    import app
    import maskgit_inpaint.settings

    defaults = getattr(maskgit_inpaint.settings, table)
    page = app.build(SimpleNamespace(mask_func="cosine", choice_temperature=4.5), [])
    widgets = {getattr(b, "elem_id", None): b for b in page.blocks.values()}
    readout, slider = widgets["readout"], widgets[field]
    assert slider.value == getattr(Decoding(), prop) == defaults[readout.value]
    follow = [f for f in page.fns.values() if [b._id for b in f.inputs] == [readout._id]
              and [b._id for b in f.outputs] == [slider._id]]
    assert len(follow) == 1 and follow[0].targets == [(readout._id, "change")]
    assert {name: follow[0].fn(name) for name in defaults} == defaults
    assert len(set(defaults.values())) > 1  # the readouts differ, so following is visible
