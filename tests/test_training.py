"""Both training scripts on tiny configs (16x16 images, 4x4 tokens, 16 codes) on the CPU: smoke runs
that overfit, exact resume, refused truncated checkpoints, token-cache invalidation, NaN stop, and
DDP with 2 gloo processes. Runs are in-process where possible; subprocesses where exit codes matter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_configs import TINY_VQGAN as TINY_VQGAN_MODEL

from common import UserError, load_checkpoint, load_weights, read_safetensors, run_cli, save_checkpoint
from data import ImageFolderDataset, normalize, pixel_to_token_mask, to_uint8_image, training_views, view_pixels
from maskgit_inpaint.metrics import compute_metrics
from models import VQGAN, BidirectionalTransformer
from models.config import load_maskgit_config, load_vqgan_config, transformer_param
from models.kmeans import kmeans
from models.maskgit import MaskGit, load_maskgit
from models.pretrained import weights_digest
from models.refit import CODEBOOK, map_vocabulary
from training import engine
from training import transformer as stage2
from training import vqgan as stage1
from training.engine import RunLog

ROOT = Path(__file__).resolve().parents[1]

TINY_VQGAN = TINY_VQGAN_MODEL + """train_param:
  epochs: 3
  batch_size: 4
  learning_rate: 2.0e-3
  warmup_steps: 2
  disc_start: 100000
  reinit_every: 4
  flip: true
"""

TINY_MASKGIT = """
model_param:
  VQ_Configs:
    VQ_config_path: vqgan.yml
    VQ_CKPT_path: vqgan.pt
  num_image_tokens: 16
  num_codebook_vectors: 16
  label_smoothing: 0.1
  Transformer_param:
    num_image_tokens: 16
    num_codebook_vectors: 16
    dim: 32
    n_layers: 1
    hidden_dim: 64
    num_heads: 4
    dropout: 0.1
    attention: sdpa
train_param:
  epochs: 2
  batch_size: 4
  learning_rate: 3.0e-3
  warmup_steps: 2
  flip: true
"""


def write_images(folder: Path, count: int, seed: int) -> None:
    """Colored squares on white, 16x16 PNGs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.full((16, 16, 3), 255, np.uint8)
        x, y, size = rng.integers(0, 8), rng.integers(0, 8), rng.integers(4, 9)
        pixels[y:y + size, x:x + size] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")


def random_vqgan(cfg: dict, images: Path, seed: int) -> VQGAN:
    """An untrained VQGAN whose codes are spread over its encoder outputs, so the tokens vary."""
    torch.manual_seed(seed)
    vqgan = VQGAN(cfg).eval()
    batch = torch.stack([ImageFolderDataset(images, cfg["mean"], cfg["std"], size=16)[i] for i in range(8)])
    with torch.no_grad():
        latents = vqgan.encode_latents(batch).permute(0, 2, 3, 1).flatten(0, 2)  # (8*4*4, C)
        vqgan.codebook.embedding.weight.copy_(latents[torch.randperm(len(latents))[:16]])
    return vqgan


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("training")
    write_images(root / "train", 16, seed=0)
    write_images(root / "val", 8, seed=1)
    (root / "vqgan.yml").write_text(TINY_VQGAN)
    (root / "maskgit.yml").write_text(TINY_MASKGIT)
    vqgan = random_vqgan(load_vqgan_config(root / "vqgan.yml"), root / "train", seed=0)
    save_checkpoint(vqgan.state_dict(), root / "vqgan.pt")
    return SimpleNamespace(root=root, train=root / "train", val=root / "val", vq_config=root / "vqgan.yml",
                           config=root / "maskgit.yml", vq_ckpt=root / "vqgan.pt")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage2_argv(ws: SimpleNamespace, run: Path, *extra: str, cache: Path | None = None) -> list[str]:
    return ["--MaskGitConfig", str(ws.config), "--train_d_path", str(ws.train), "--val_d_path", str(ws.val),
            "--checkpoint-path", str(run), "--cache-dir", str(cache or ws.root / "cache"), "--device", "cpu",
            "--num_workers", "0", "--log-every", "1", *extra]


def run_stage2(ws: SimpleNamespace, run: Path, *extra: str, cache: Path | None = None):
    return stage2.train(stage2.parse_args(stage2_argv(ws, run, *extra, cache=cache)))


def stage1_argv(ws: SimpleNamespace, run: Path, *extra: str) -> list[str]:
    return ["training_vqgan.py", "--config", str(ws.vq_config), "--train-path", str(ws.train),
            "--val-path", str(ws.val), "--run-dir", str(run), "--device", "cpu", "--num_workers", "0", *extra]


def run_stage1(ws: SimpleNamespace, run: Path, monkeypatch, *extra: str) -> None:
    monkeypatch.setattr(sys, "argv", stage1_argv(ws, run, *extra))
    stage1.main()


def records(run: Path, key: str) -> list[float]:
    return [r[key] for r in RunLog(run).records if key in r]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- stage 2

def test_stage2_overfits_and_writes_its_files(ws, tmp_path):
    run = tmp_path / "run"
    model, step = run_stage2(ws, run, "--epochs", "8", "--val_d_path", str(ws.train))  # val = train: overfit
    assert step == 32
    val_loss = records(run, "val_loss")
    assert len(val_loss) == 8 and val_loss[-1] < val_loss[0] - 0.1, val_loss
    assert records(run, "val_acc")[-1] > records(run, "val_acc")[0]
    for name in ("last.pt", "best.pt", "transformer.pt", "log.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    best = load_checkpoint(run / "best.pt")  # chosen by the val inpainting's hole PSNR, the first of the highest
    psnr = [(r["val_psnr_hole"], -r["step"]) for r in RunLog(run).records if "val_psnr_hole" in r]
    assert best["best"] == {"by": "val_psnr_hole", "score": max(psnr)[0]} and best["step"] == -max(psnr)[1]
    losses = [(r["step"], r["val_loss"]) for r in RunLog(run).records if "val_loss" in r]
    assert best["best_val_loss"] == pytest.approx(min(loss for step, loss in losses if step <= best["step"]))

    # the plain weights load into MaskGit for inpainting; the fp16 export loads back into fp32
    loaded = load_maskgit(str(ws.config), transformer_ckpt=str(run / "transformer.pt"))
    assert_same_weights(loaded.transformer.state_dict(), best["model"])
    exported = tmp_path / "exported"
    stage2.main(stage2_argv(ws, run, "--export", str(exported)))
    assert all(v.dtype == torch.float16 for v in read_safetensors(exported).values())
    fresh = BidirectionalTransformer(load_maskgit_config(ws.config)["Transformer_param"])
    load_weights(fresh, exported)
    torch.testing.assert_close(fresh.state_dict(), best["model"], atol=1e-3, rtol=1e-3)
    meta = json.loads((exported / "config.json").read_text())
    assert meta["kind"] == "maskgit" and meta["run"]["step"] == best["step"] and "VQ_Configs" not in meta["config"]
    assert meta["vqgan"]["digest"] == weights_digest(torch.load(ws.vq_ckpt, weights_only=True))

    # the folder loads alone (its VQGAN found from its record); another VQGAN is refused, naming both
    model = MaskGit.from_pretrained(exported)
    assert_same_weights(model.transformer.state_dict(), fresh.state_dict())
    other = bad_vqgan_checkpoint(ws, tmp_path, same_shape=True)
    with pytest.raises(UserError, match=f"{exported} was trained on another VQGAN than {other}"):
        MaskGit.from_pretrained(exported, vqgan=other)
    with pytest.raises(UserError, match=f"trained on another VQGAN file than {other}"):
        stage2.main(stage2_argv(ws, run, "--export", str(tmp_path / "refused"), "--vqgan-ckpt", str(other)))
    assert not (tmp_path / "refused").exists()


def test_stage2_resume_equals_uninterrupted_run(ws, tmp_path):
    # 4 steps per epoch (16 images, 2 x 2 accumulated); killed mid-epoch 1, resumed across the epoch end
    flags = ("--batch-size", "2", "--accum-grad", "2", "--save-every", "100", "--save-per-epoch", "1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage2(ws, straight, *flags, "--max-steps", "6")
    run_stage2(ws, resumed, *flags, "--max-steps", "3")
    assert load_checkpoint(resumed / "last.pt")["step"] == 3
    run_stage2(ws, resumed, *flags, "--max-steps", "6", "--resume")
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == 6
    assert_same_weights(a["model"], b["model"])
    assert records(straight, "loss") == records(resumed, "loss")

    # the lab's --start-from-epoch: rewind to the snapshot written after epoch 1 and redo steps 5-6
    assert load_checkpoint(straight / "epoch001.pt")["step"] == 4
    run_stage2(ws, straight, *flags, "--max-steps", "6", "--start-from-epoch", "1")
    assert_same_weights(load_checkpoint(straight / "last.pt")["model"], a["model"])


def test_truncated_checkpoint_is_refused(ws, tmp_path):
    run = tmp_path / "run"
    run_stage2(ws, run, "--max-steps", "1")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[:len(data) // 2])
    result = subprocess.run([sys.executable, "training_transformer.py", *stage2_argv(ws, run, "--resume")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "last.pt" in error[0] and "truncated" in error[0], result.stderr


def bad_vqgan_checkpoint(ws: SimpleNamespace, tmp_path: Path, same_shape: bool = False) -> Path:
    """Another VQGAN's weights: of another shape, or (`same_shape`) the config's with other values."""
    cfg = load_vqgan_config(ws.vq_config)
    save_checkpoint(VQGAN(cfg if same_shape else {**cfg, "latent_dim": 4}).state_dict(), tmp_path / "other.pt")
    return tmp_path / "other.pt"


@pytest.mark.parametrize("case, message", [
    ("config", "config not found"),
    ("data", "--train-path"),
    ("vqgan_missing", "VQGAN checkpoint not found"),
    ("vqgan_mismatch", "does not match the model"),
    ("partial", "--partial"),
    ("lab_checkpoint_file", "run folder"),
    ("exists", "pass --resume"),
])
def test_bad_input_is_one_line_and_exit_2(ws, tmp_path, monkeypatch, capsys, case, message):
    run = tmp_path / "run"
    extra = {"config": ["--MaskGitConfig", str(tmp_path / "missing.yml")],
             "data": ["--train_d_path", str(tmp_path / "missing")],
             "vqgan_missing": ["--vqgan-ckpt", str(tmp_path / "missing.pt")],
             "vqgan_mismatch": ["--vqgan-ckpt", str(bad_vqgan_checkpoint(ws, tmp_path))],
             "partial": ["--partial", "0"],
             "lab_checkpoint_file": ["--checkpoint-path", str(tmp_path / "last_ckpt.pt")],
             "exists": []}[case]
    if case == "exists":
        save_checkpoint({}, run / "last.pt")
    monkeypatch.setattr(sys, "argv", ["training_transformer.py", *stage2_argv(ws, run, *extra)])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(stage2.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_token_cache_is_reused_and_rebuilt_when_inputs_change(ws, tmp_path, monkeypatch):
    encoded = []
    encode = stage2.encode_images
    monkeypatch.setattr(stage2, "encode_images", lambda *a, **k: encoded.append(a[6]) or encode(*a, **k))
    train = tmp_path / "train"
    write_images(train, 16, seed=0)
    cache = tmp_path / "cache"

    def run(name: str, *extra: str) -> list[str]:
        encoded.clear()
        run_stage2(ws, tmp_path / name, "--max-steps", "1", "--train_d_path", str(train), *extra, cache=cache)
        return list(encoded)

    assert run("first") == ["encoding train images", "encoding val images"]
    assert run("same") == []  # another run, same VQGAN and data: read from the cache
    assert len(list(cache.glob("*.pt"))) == 2

    # the cached tokens are the VQGAN's tokens of each image and of its mirror image
    (entry,) = cache.glob("train-*.pt")
    tokens = load_checkpoint(entry)["tokens"]
    assert tokens.dtype == torch.int16 and tokens.shape == (16, 2, 16)
    model = load_maskgit(str(ws.config))
    image = ImageFolderDataset(train, model.vqgan.cfg["mean"], model.vqgan.cfg["std"], size=16)[3][None]
    assert torch.equal(tokens[3, 0].long(), model.encode_to_z(image)[1][0])
    assert torch.equal(tokens[3, 1].long(), model.encode_to_z(image.flip(-1))[1][0])
    entry.write_bytes(b"damaged")
    assert run("damaged_cache_file") == ["encoding train images"]

    other = random_vqgan(load_vqgan_config(ws.vq_config), train, seed=1)
    save_checkpoint(other.state_dict(), tmp_path / "other_vqgan.pt")
    assert run("new_vqgan", "--vqgan-ckpt", str(tmp_path / "other_vqgan.pt")) == [
        "encoding train images", "encoding val images"]
    write_images(tmp_path / "more", 1, seed=5)
    (tmp_path / "more" / "img00.png").rename(train / "extra.png")
    assert run("new_image") == ["encoding train images"]
    os.utime(train / "img05.png", ns=(0, 0))
    assert run("touched_image") == ["encoding train images"]
    no_flip = maskgit_config(ws, tmp_path / "maskgit_noflip.yml", "flip: false")
    assert run("flip_off", "--MaskGitConfig", str(no_flip)) == ["encoding train images"]


def maskgit_config(ws: SimpleNamespace, path: Path, train_lines: str) -> Path:
    """TINY_MASKGIT on the VQGAN of `ws`, its `flip: true` line replaced by `train_lines`, written to `path`."""
    text = TINY_MASKGIT.replace("flip: true", train_lines)
    path.write_text(text.replace("vqgan.yml", str(ws.vq_config)).replace("vqgan.pt", str(ws.vq_ckpt)))
    return path


def test_nan_loss_stops_and_keeps_last_checkpoint(ws, tmp_path, monkeypatch):
    calls = []
    real_loss = stage2.masked_token_loss

    def poisoned(*args, **kwargs):
        calls.append(1)
        losses, correct = real_loss(*args, **kwargs)
        return (losses * float("nan") if len(calls) > 2 else losses), correct

    monkeypatch.setattr(stage2, "masked_token_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(UserError, match="loss is nan at step 2"):
        run_stage2(ws, run, "--save-every", "1")
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


DDP_WORKER = """
import os, sys
import torch
from training import transformer as stage2
torch.set_num_threads(1)
model, step = stage2.train(stage2.parse_args(sys.argv[1:]))
out = os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt")
torch.save({{"step": step, "model": model.transformer.state_dict()}}, out)
"""


def test_ddp_two_gloo_processes_stay_in_step(ws, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER.format(out=str(tmp_path)))
    run = tmp_path / "run"
    argv = stage2_argv(ws, run, "--batch-size", "2", "--max-steps", "3", cache=tmp_path / "cache")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(worker), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    assert_same_weights(ranks[0]["model"], ranks[1]["model"])
    state = load_checkpoint(run / "last.pt")  # written by rank 0 only
    assert state["steps_per_epoch"] == 4  # 16 images / (2 ranks x 2)
    assert_same_weights(state["model"], ranks[0]["model"])
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert records(run, "step") and max(records(run, "step")) == 3


# ----------------------------------------------------------------------------- stage 1

def test_stage1_smoke_then_stage2_on_its_tokens(ws, tmp_path, monkeypatch):
    run = tmp_path / "vqgan"
    run_stage1(ws, run, monkeypatch, "--val-path", str(ws.train))
    psnr = records(run, "val_psnr")
    assert len(psnr) == 3 and psnr[-1] > psnr[0], psnr
    assert (run / "vqgan.pt").is_file() and (run / "curves.png").is_file()
    # stage 2 on the exported stage-1 folder; the float32 run weights and their float16 export share a digest
    vq_export = tmp_path / "vqgan_export"
    run_stage1(ws, run, monkeypatch, "--export", str(vq_export))
    assert json.loads((vq_export / "config.json").read_text())["digest"] == weights_digest(
        load_checkpoint(run / "vqgan.pt"))
    maskgit = tmp_path / "maskgit"
    _, step = run_stage2(ws, maskgit, "--vqgan-ckpt", str(vq_export), "--max-steps", "2")
    assert step == 2
    stage2.main(stage2_argv(ws, maskgit, "--vqgan-ckpt", str(vq_export), "--export", str(tmp_path / "maskgit_export")))
    model = MaskGit.from_pretrained(tmp_path / "maskgit_export")
    vq_state = read_safetensors(vq_export)
    assert all(torch.equal(v, vq_state[k].float()) for k, v in model.vqgan.state_dict().items())


def test_stage1_resume_equals_uninterrupted_run(ws, tmp_path, monkeypatch):
    run_stage1(ws, tmp_path / "straight", monkeypatch, "--max-steps", "6")
    run_stage1(ws, tmp_path / "resumed", monkeypatch, "--max-steps", "3")
    run_stage1(ws, tmp_path / "resumed", monkeypatch, "--max-steps", "6", "--resume")
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 6
    assert_same_weights(a["vqgan"], b["vqgan"])


def test_stage1_resume_with_another_config_is_one_line(ws, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run_stage1(ws, run, monkeypatch, "--max-steps", "1")
    other = tmp_path / "wider.yml"
    other.write_text(TINY_VQGAN.replace("latent_dim: 8", "latent_dim: 4"))
    argv = stage1_argv(ws, run, "--resume")
    argv[argv.index("--config") + 1] = str(other)
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(stage1.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not match" in err[0] and str(other) in err[0], err


@pytest.mark.parametrize("script", [stage1, stage2])
def test_both_scripts_take_both_spellings_of_each_flag(script):
    lab = script.parse_args(["--MaskGitConfig", "a.yml", "--checkpoint-path", "r", "--train_d_path", "t",
                             "--val_d_path", "v", "--num_workers", "3"])
    ours = script.parse_args(["--config", "a.yml", "--run-dir", "r", "--train-path", "t", "--val-path", "v",
                              "--num-workers", "3"])
    assert vars(lab) == vars(ours)
    assert (ours.config, ours.run_dir, ours.train_path, ours.val_path) == ("a.yml", "r", ["t"], "v")
    assert ours.num_workers == 3
    assert script.parse_args(["--train-path", "t", "u"]).train_path == ["t", "u"]  # two styles of emoji


def test_training_images_of_two_folders_and_their_credits(ws, tmp_path):
    """--train-path A B trains on both folders' images (A's, then B's) and the export credits both."""
    other = tmp_path / "openmoji" / "train"
    other.mkdir(parents=True)
    (tmp_path / "openmoji" / "CREDITS.md").write_text("OpenMoji, CC BY-SA 4.0")
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(other / f"{i}.png")
    both = ImageFolderDataset([ws.train, other], [0.5] * 3, [0.5] * 3, size=16)
    alone = ImageFolderDataset(ws.train, [0.5] * 3, [0.5] * 3, size=16)
    assert both.files == alone.files + sorted(other.iterdir())
    torch.testing.assert_close(both[len(alone)], torch.full((3, 16, 16), -1.0))  # black, normalized
    run = tmp_path / "run"
    run_stage2(ws, run, "--max-steps", "1", "--val-inpaint", "0", "--train-path", str(ws.train), str(other))
    stage2.main(stage2_argv(ws, run, "--export", str(tmp_path / "export")))
    data = json.loads((tmp_path / "export" / "config.json").read_text())["data"]
    assert data["train_path"] == f"{ws.train} {other}" and data["credits"] == "OpenMoji, CC BY-SA 4.0"


def test_stage2_hole_masks_codebook_init_and_val_inpainting(ws, tmp_path):
    """hole-shaped training masks and the codebook-initialized embedding keep the exact resume, and
    each validation logs the inpainting figures beside Navier-Stokes on the same val images."""
    config = maskgit_config(ws, tmp_path / "maskgit_holes.yml",
                            "flip: true\n  hole_mask_share: 0.5\n  embedding_init: codebook")
    flags = ("--MaskGitConfig", str(config), "--save-every", "100", "--val-inpaint", "5")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    model, _ = run_stage2(ws, straight, *flags, "--max-steps", "6")
    run_stage2(ws, resumed, *flags, "--max-steps", "3")
    run_stage2(ws, resumed, *flags, "--max-steps", "6", "--resume")
    assert_same_weights(load_checkpoint(straight / "last.pt")["model"], load_checkpoint(resumed / "last.pt")["model"])

    # the embedding started from the codebook: same Gram matrix (up to scale) as the centred codes
    fresh = stage2.train(stage2.parse_args(stage2_argv(ws, tmp_path / "zero", *flags, "--max-steps", "1",
                                                       "--learning-rate", "1e-12", "--val-inpaint", "0")))[0]
    codes = fresh.vqgan.codebook.embedding.weight - fresh.vqgan.codebook.embedding.weight.mean(0)
    emb = fresh.transformer.tok_emb.weight[:16].detach()
    torch.testing.assert_close((emb @ emb.T) / (emb @ emb.T)[0, 0], (codes @ codes.T) / (codes @ codes.T)[0, 0],
                               atol=1e-3, rtol=1e-3)

    logged = [r for r in RunLog(straight).records if "val_psnr_hole" in r]
    assert len(logged) == 2  # epoch 1 (4 steps) and the last step
    for record in logged:
        assert 0 < record["val_psnr_hole"] < 100 and 0 < record["val_ssim"] <= 1
        assert 0 < record["val_ns_psnr_hole"] < 100 and record["val_ns_ssim"] > 0
        assert 0 < record["val_iter_psnr_hole"] < 100 and 0 < record["val_iter_ssim"] <= 1
        assert record["val_iter_psnr_hole"] != record["val_psnr_hole"]  # the other decoding, not a copy
    assert logged[0]["val_ns_psnr_hole"] == logged[1]["val_ns_psnr_hole"]  # fixed images and holes
    assert records(tmp_path / "zero", "val_psnr_hole") == []
    zero_loss = records(tmp_path / "zero", "val_loss")[0]
    assert load_checkpoint(tmp_path / "zero" / "best.pt")["best"] == {"by": "val_loss", "score": -zero_loss}



def test_init_from_starts_a_new_run_from_weights_of_the_same_vqgan(ws, tmp_path, capsys):
    source = tmp_path / "source"
    run_stage2(ws, source, "--max-steps", "2", "--val-inpaint", "0")
    config = maskgit_config(ws, tmp_path / "clipped.yml", "flip: true\n  grad_clip: 0.000001")
    flags = ("--MaskGitConfig", str(config), "--val-inpaint", "0", "--max-steps", "1")
    model, _ = run_stage2(ws, tmp_path / "tuned", *flags, "--init-from", str(source / "last.pt"),
                          "--learning-rate", "1e-12")
    started = load_checkpoint(source / "last.pt")["model"]
    for key, value in model.transformer.state_dict().items():
        torch.testing.assert_close(value, started[key], atol=1e-6, rtol=0)  # the source's weights, fresh optimizer
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["step"] == 1
    # the new run's own train_param (a tighter gradient clip) changes the update: same start, same batch, other weights
    plain, _ = run_stage2(ws, tmp_path / "plain", "--max-steps", "1", "--val-inpaint", "0",
                          "--init-from", str(source / "last.pt"))
    clipped, _ = run_stage2(ws, tmp_path / "clipped", *flags, "--init-from", str(source / "last.pt"))
    assert not torch.equal(plain.transformer.tok_emb.weight, clipped.transformer.tok_emb.weight)

    other = tmp_path / "other_vqgan.pt"
    save_checkpoint(random_vqgan(load_vqgan_config(ws.vq_config), ws.train, seed=1).state_dict(), other)
    with pytest.raises(UserError, match="another VQGAN"):
        run_stage2(ws, tmp_path / "refused", *flags, "--init-from", str(source / "last.pt"), "--vqgan-ckpt", str(other))
    exported = tmp_path / "exported"
    stage2.main(stage2_argv(ws, source, "--export", str(exported)))
    with pytest.raises(UserError, match=r"another VQGAN than .*\(--vqgan-ckpt\)"):
        run_stage2(ws, tmp_path / "refused_folder", *flags, "--init-from", str(exported), "--vqgan-ckpt", str(other))
    run_stage2(ws, tmp_path / "from_folder", *flags, "--init-from", str(exported))  # its own VQGAN: accepted
    with pytest.raises(UserError, match="--init-from starts a new run"):
        run_stage2(ws, tmp_path / "tuned", *flags, "--init-from", str(source / "last.pt"), "--resume")


def refit_argv(ws: SimpleNamespace, weights: Path, dest: Path, k: int, *extra: str) -> list[str]:
    return ["--config", str(ws.vq_config), "--train-path", str(ws.train), "--val-path", str(ws.val), "--device", "cpu",
            "--refit-codebook", str(k), "--weights", str(weights), "--export", str(dest), *extra]


def test_a_known_pixel_decoder_starts_as_the_plain_one_and_sees_only_the_known_pixels(ws):
    cfg = load_vqgan_config(ws.vq_config)
    plain = VQGAN(cfg).eval()
    known = VQGAN({**cfg, "known_pixels": True}).eval()
    known.load_state_dict({**known.state_dict(), **plain.state_dict()})
    torch.manual_seed(0)
    z_q, images = torch.randn(2, cfg["latent_dim"], 4, 4), torch.randn(2, 3, 16, 16)
    hole = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    hole[:, :, 4:12, 2:9] = True
    with torch.no_grad():
        assert torch.equal(known.decode(z_q, images, hole), plain.decode(z_q))  # its output convs start at zero
        for conv in known.known_pixels.out:
            torch.nn.init.normal_(conv.weight, std=0.2)
        seen = known.decode(z_q, images, hole)
        assert not torch.allclose(seen, plain.decode(z_q), atol=1e-3)
        assert torch.equal(known.decode(z_q), plain.decode(z_q))  # without the known pixels: the tokens alone
        scribbled = torch.where(hole, torch.randn_like(images), images)  # other pixels inside the hole only
        assert torch.equal(known.decode(z_q, scribbled, hole), seen)
        assert not torch.allclose(known.decode(z_q, images + 0.5, hole), seen, atol=1e-3)


def test_own_code_hole_psnr_scores_the_val_holes_like_an_inpainting_run(ws):
    cfg = load_vqgan_config(ws.vq_config)
    plain = VQGAN(cfg).eval()
    plain.load_state_dict(torch.load(ws.vq_ckpt, weights_only=True))
    known = VQGAN({**cfg, "known_pixels": True}).eval()
    known.load_state_dict({**known.state_dict(), **plain.state_dict()})  # a new KnownPixels: the plain decode
    val = ImageFolderDataset(ws.val, cfg["mean"], cfg["std"], size=cfg["img_resolution"])
    items, gt = engine.val_inpainting_set(val, len(val))
    assert len(items) == len(val) and [index for _, _, index in items] == list(range(len(val)))
    holes = np.stack([hole[0].numpy() for _, hole, _ in items])
    with torch.no_grad():
        reconstructed = plain(normalize(gt, cfg["mean"], cfg["std"]))[0]  # (N, 3, H, W), from the clean image
    expected = compute_metrics(to_uint8_image(reconstructed, cfg["mean"], cfg["std"]), gt, holes)
    assert expected["scored_images"] == len(val)
    assert stage1.own_code_hole_psnr(known, val, torch.device("cpu")) == pytest.approx(expected["psnr_hole"], abs=1e-9)


def test_fit_known_pixels_keeps_the_codes_and_its_transformers(ws, tmp_path, capsys):
    dest = tmp_path / "known"
    argv = ["--config", str(ws.vq_config), "--train-path", str(ws.train), "--val-path", str(ws.val), "--device", "cpu",
            "--batch-size", "8", "--learning-rate", "3e-3"]
    stage1.main([*argv, "--weights", str(ws.vq_ckpt), "--export", str(dest), "--fit-known-pixels", "20"])
    assert "dB after 20 steps with the known pixels" in capsys.readouterr().out
    meta = json.loads((dest / "config.json").read_text())
    parent_state = torch.load(ws.vq_ckpt, weights_only=True)
    assert meta["config"]["known_pixels"] is True and meta["known_pixels"]["steps"] == 20
    assert meta["known_pixels"]["from_digest"] == weights_digest(parent_state)
    fitted = read_safetensors(dest)
    for key, value in parent_state.items():  # the codes come from the parent's encoder and codebook
        assert torch.equal(fitted[key], value.half()) == (not key.startswith(("decoder.", "post_quant_conv."))), key
    assert any(fitted[k].abs().sum() > 0 for k in fitted if k.startswith("known_pixels.out."))

    # a transformer trained on the parent's tokens works with it; one of another VQGAN's does not
    run, exported = tmp_path / "stage2", tmp_path / "stage2_export"
    run_stage2(ws, run, "--max-steps", "1", "--val-inpaint", "0")
    stage2.main(stage2_argv(ws, run, "--export", str(exported)))
    model = MaskGit.from_pretrained(exported, vqgan=dest)
    assert model.vqgan.known_pixels is not None
    # a longer fit, continued from the fitted one, names the tokens' VQGAN too and keeps its transformers
    longer = tmp_path / "known_longer"
    stage1.main([*argv, "--weights", str(dest), "--export", str(longer), "--fit-known-pixels", "2"])
    record = json.loads((longer / "config.json").read_text())
    assert record["known_pixels"]["from_digest"] == weights_digest(parent_state)
    assert record["known_pixels"]["steps"] == 22  # the first fit's 20 and this one's 2
    assert record["origin"] == f"known-pixels:{meta['digest']}"
    continued = read_safetensors(longer)
    assert not torch.equal(continued["known_pixels.out.0.weight"], fitted["known_pixels.out.0.weight"])
    assert MaskGit.from_pretrained(exported, vqgan=longer).vqgan.known_pixels is not None
    other = tmp_path / "other_known"
    stage1.main([*argv, "--weights", str(bad_vqgan_checkpoint(ws, tmp_path, same_shape=True)),
                 "--export", str(other), "--fit-known-pixels", "1"])
    with pytest.raises(UserError, match="another VQGAN"):
        MaskGit.from_pretrained(exported, vqgan=other)
    with pytest.raises(UserError, match="`known_pixels` is fitted onto a trained VQGAN"):
        stage1.train(stage1.parse_args(stage1_argv(ws, tmp_path / "scratch")[1:]),
                     SimpleNamespace(model={**load_vqgan_config(ws.vq_config), "known_pixels": True}, train={}))


def test_refit_codebook_exports_the_kmeans_codes_and_names_its_parent(ws, tmp_path, capsys):
    dest = tmp_path / "refit4"
    stage1.main(refit_argv(ws, ws.vq_ckpt, dest, 4))
    out = capsys.readouterr().out
    assert "k-means of 512 training latents into 4 codes" in out  # 16 images and their mirror images x 4x4 tokens
    assert "dB with the 16 codes of" in out and "dB with the 4 refit codes" in out and "decoder steps" not in out
    meta = json.loads((dest / "config.json").read_text())
    parent_state = torch.load(ws.vq_ckpt, weights_only=True)
    assert meta["config"]["num_codebook_vectors"] == 4
    assert meta["refit"]["from_digest"] == weights_digest(parent_state) and meta["refit"]["num_codes"] == 4
    assert (dest / meta["refit"]["from_path"]).resolve() == ws.vq_ckpt.resolve()
    # the parent's encoder and decoder, and the k-means centroids of its training latents as the codebook
    parent = VQGAN(load_vqgan_config(ws.vq_config))
    parent.load_state_dict(parent_state)
    latents = stage1.training_latents(parent, ImageFolderDataset(ws.train, parent.cfg["mean"], parent.cfg["std"],
                                                                 size=16), True, torch.device("cpu"))
    refit = read_safetensors(dest)
    codebook = refit.pop(CODEBOOK)
    torch.testing.assert_close(codebook.float(), kmeans(latents, 4).centroids, atol=1e-3, rtol=1e-3)
    assert_same_weights(refit, {k: v.half() for k, v in parent_state.items() if k != CODEBOOK})

    # a fine-tune changes the decoder and post_quant_conv only, and may replace an earlier refit of the parent
    stage1.main(refit_argv(ws, ws.vq_ckpt, dest, 4, "--refit-decoder-steps", "3"))
    assert "after 3 decoder steps" in capsys.readouterr().out
    assert json.loads((dest / "config.json").read_text())["refit"]["decoder_steps"] == 3
    tuned = read_safetensors(dest)
    assert torch.equal(tuned[CODEBOOK], codebook)
    for key, value in refit.items():
        changed = not torch.equal(tuned[key], value)
        assert changed == key.startswith(("decoder.", "post_quant_conv.")), key
    # a folder of other files, or a refit of another VQGAN, is never overwritten
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    for weights, occupied in ((ws.vq_ckpt, taken), (bad_vqgan_checkpoint(ws, tmp_path, same_shape=True), dest)):
        with pytest.raises(UserError, match="exists and is not an exported model folder|holds another vqgan model"):
            stage1.main(refit_argv(ws, weights, occupied, 4))
    with pytest.raises(UserError, match="--refit-codebook 513: the training images have only 512 latents"):
        stage1.main(refit_argv(ws, ws.vq_ckpt, tmp_path / "too_many", 513))
    assert (taken / "notes.txt").read_text() == "mine" and torch.equal(read_safetensors(dest)[CODEBOOK],
                                                                      tuned[CODEBOOK])


def test_evaluate_builds_the_vqgan_its_weights_record(ws, tmp_path, capsys):
    refit4 = tmp_path / "refit4"
    stage1.main(refit_argv(ws, ws.vq_ckpt, refit4, 4))
    capsys.readouterr()

    def evaluate(weights: Path) -> tuple[str, dict]:
        run = tmp_path / f"eval_{weights.name}"
        stage1.main(["--config", str(ws.vq_config), "--run-dir", str(run), "--device", "cpu", "--num_workers", "0",
                     "--evaluate", str(ws.val), "--weights", str(weights)])
        return capsys.readouterr().out, json.loads((run / "tokens_val.json").read_text())

    # the refit folder records a 4-code VQGAN: built as such, though --config has 16 codes
    out, report = evaluate(refit4)
    assert "records its own model_param" in out and "of 4 codes)" in out
    assert report["num_codes"] == 4 and report["images"] == 8
    # plain weights record nothing: --config's 16 codes, no note
    out, report = evaluate(ws.vq_ckpt)
    assert "records its own" not in out and "of 16 codes)" in out and report["num_codes"] == 16


def test_vocabulary_map_onto_a_refit_sums_the_probabilities_of_merged_codes():
    """An old transformer whose codes that map to one new code share an embedding row: the mapped
    transformer gives each new code exactly the summed probability of its old codes."""
    torch.manual_seed(0)
    new_codebook = 10 * torch.randn(4, 8)
    group = torch.arange(16) % 4  # old code c is a near copy of new code c % 4
    old_codebook = new_codebook[group] + 0.1 * torch.randn(16, 8)
    tcfg = transformer_param(num_image_tokens=16, num_codebook_vectors=16, dim=32, n_layers=2, hidden_dim=64,
                             num_heads=4, dropout=0.0)
    old = BidirectionalTransformer(tcfg).eval()
    with torch.no_grad():
        old.tok_emb.weight[:16] = old.tok_emb.weight[group]  # rows of codes merged together are equal
        old.bias.normal_(0, 2)
    state, note = map_vocabulary(old.state_dict(), old_codebook, new_codebook)
    assert note.startswith("mapped the transformer's 16 codes onto the 4 of the refit") and "0 take none" in note
    new = BidirectionalTransformer({**tcfg, "num_codebook_vectors": 4}).eval()
    new.load_state_dict(state)

    tokens = torch.randint(16, (3, 16))
    masked = torch.rand(3, 16) < 0.5
    old_in = torch.where(masked, 16, tokens)
    new_in = torch.where(masked, 4, group[tokens])
    with torch.no_grad():
        old_probs = old(old_in)[..., :-1].softmax(-1)  # (B, N, 16), the mask token left out as in training
        new_probs = new(new_in)[..., :-1].softmax(-1)  # (B, N, 4)
    summed = torch.zeros_like(new_probs).index_add_(2, group, old_probs)
    torch.testing.assert_close(new_probs, summed, atol=1e-6, rtol=1e-5)

    # a new code no old code is nearest to starts as a copy of the old code nearest to it
    far = torch.cat([new_codebook, new_codebook[1:2] + 3.0])  # 3 from code 1, whose old codes are about 0.3 from it
    state, note = map_vocabulary(old.state_dict(), old_codebook, far)
    assert "1 take none" in note
    source = int(torch.cdist(far[4:], old_codebook).argmin())
    assert group[source] == 1
    assert torch.equal(state["tok_emb.weight"][4], old.tok_emb.weight[source])
    assert torch.equal(state["bias"][:, 4], old.bias[:, source])
    assert torch.equal(state["tok_emb.weight"][5], old.tok_emb.weight[16])  # the mask token's row


def write_tiny_configs(folder: Path, num_codes: int, vqgan: Path) -> Path:
    """The tiny VQGAN and MaskGit configs with `num_codes` codes in `folder`, the MaskGit's on the
    VQGAN weights `vqgan`; returns the MaskGit config."""
    folder.mkdir(parents=True)
    codes = ("num_codebook_vectors: 16", f"num_codebook_vectors: {num_codes}")
    (folder / "vqgan.yml").write_text(TINY_VQGAN.replace(*codes))
    (folder / "maskgit.yml").write_text(TINY_MASKGIT.replace(*codes).replace("vqgan.pt", str(vqgan)))
    return folder / "maskgit.yml"


def test_init_from_a_transformer_of_the_parent_maps_it_onto_a_refit(ws, tmp_path, capsys):
    parent = tmp_path / "parent.pt"
    parent.write_bytes(ws.vq_ckpt.read_bytes())
    source = tmp_path / "source"
    run_stage2(ws, source, "--max-steps", "2", "--val-inpaint", "0", "--vqgan-ckpt", str(parent))
    refit = tmp_path / "refit4"
    stage1.main(refit_argv(ws, parent, refit, 4))
    config = write_tiny_configs(tmp_path / "configs", 4, refit)
    flags = ("--MaskGitConfig", str(config), "--val-inpaint", "0", "--max-steps", "1", "--learning-rate", "1e-12")
    capsys.readouterr()
    model, _ = run_stage2(ws, tmp_path / "tuned", *flags, "--init-from", str(source / "last.pt"))
    assert "mapped the transformer's 16 codes onto the 4 of the refit" in capsys.readouterr().out
    old_codebook, new_codebook = torch.load(parent, weights_only=True)[CODEBOOK], read_safetensors(refit)[CODEBOOK]
    expected, _ = map_vocabulary(load_checkpoint(source / "last.pt")["model"], old_codebook, new_codebook.float())
    torch.testing.assert_close(model.transformer.state_dict(), expected, atol=1e-6, rtol=0)
    # an exported transformer of the parent maps too; one of another VQGAN, or a parent that changed, is refused
    exported = tmp_path / "exported"
    stage2.main(stage2_argv(ws, source, "--export", str(exported), "--vqgan-ckpt", str(parent)))
    run_stage2(ws, tmp_path / "from_folder", *flags, "--init-from", str(exported))
    other = tmp_path / "other"
    run_stage2(ws, other, "--max-steps", "1", "--val-inpaint", "0", "--vqgan-ckpt",
               str(bad_vqgan_checkpoint(ws, tmp_path, same_shape=True)))
    with pytest.raises(UserError, match=r"another VQGAN than .*refit4; .* or a codebook refit of it \(--vqgan-ckpt\)"):
        run_stage2(ws, tmp_path / "refused", *flags, "--init-from", str(other / "last.pt"))
    save_checkpoint(VQGAN(load_vqgan_config(ws.vq_config)).state_dict(), parent)
    with pytest.raises(UserError, match="is a refit of other weights than those now at"):
        run_stage2(ws, tmp_path / "refused_parent", *flags, "--init-from", str(source / "last.pt"))


# ----------------------------------------------------------------------------- interrupted and changed runs

def tiny_schedule(lr: float, total_steps: int) -> dict[str, engine.Stateful]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return {"model": model, "optimizer": optimizer, "scheduler": engine.lr_scheduler(optimizer, total_steps, 2)}


def test_resume_puts_the_lr_schedule_on_new_learning_rate_and_epochs(tmp_path, capsys):
    parts = tiny_schedule(3e-3, 10)
    for _ in range(5):
        parts["optimizer"].step()
        parts["scheduler"].step()
    state = engine.run_state(parts, 1, tmp_path, step=5,
                             train_param={"learning_rate": 3e-3, "epochs": 1, "warmup_steps": 2, "batch_size": 4})
    tcfg = {**state["train_param"]}

    # nothing changed: the exact learning rate of the run, no notice
    same = tiny_schedule(3e-3, 10)
    engine.restore(state, same, 0, tmp_path / "last.pt", "c.yml", tcfg=tcfg, total_steps=10, stop_at=10)
    assert same["optimizer"].param_groups[0]["lr"] == state["optimizer"]["param_groups"][0]["lr"]
    assert capsys.readouterr().out == ""

    # a lower learning rate and twice the epochs: the first resumed step already uses the new schedule
    new = tiny_schedule(3e-3, 20)
    engine.restore(state, new, 0, tmp_path / "last.pt", "c.yml", tcfg={**tcfg, "learning_rate": 1e-3, "epochs": 2},
                   total_steps=20, stop_at=20)
    assert new["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3 * engine.warmup_cosine(5, 20, 2))
    new["optimizer"].step()
    new["scheduler"].step()
    assert new["scheduler"].get_last_lr()[0] == pytest.approx(1e-3 * engine.warmup_cosine(6, 20, 2))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "learning_rate 0.003 -> 0.001; epochs 1 -> 2; the LR schedule spans 20 steps" in out[0]

    with pytest.raises(UserError, match="batch_size is 8 now .* but 4 in .*last.pt"):
        engine.restore(state, tiny_schedule(3e-3, 10), 0, tmp_path / "last.pt", "c.yml",
                       tcfg={**tcfg, "batch_size": 8}, total_steps=10, stop_at=10)
    with pytest.raises(UserError, match="is at step 5 and this run stops at step 4 .*: nothing to do"):
        engine.restore(state, tiny_schedule(3e-3, 4), 0, tmp_path / "last.pt", "c.yml", tcfg=tcfg,
                       total_steps=4, stop_at=4)


def test_stage2_resume_extends_epochs_with_a_new_learning_rate(ws, tmp_path, capsys):
    run = tmp_path / "run"
    run_stage2(ws, run, "--epochs", "1")  # 4 steps: the whole cosine at 3e-3
    lr = {r["step"]: r["lr"] for r in RunLog(run).records if "lr" in r}
    assert lr[4] == pytest.approx(3e-3 * 0.1)
    capsys.readouterr()
    _, step = run_stage2(ws, run, "--resume", "--epochs", "2", "--learning-rate", "1e-3")
    assert step == 8
    notice = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resuming with changes")]
    assert notice == [f"resuming with changes: epochs 1 -> 2; learning_rate 0.003 -> 0.001; the LR schedule spans 8 "
                      f"steps and its learning rate at step 4 is {1e-3 * engine.warmup_cosine(4, 8, 2):.3g} "
                      f"(was {3e-3 * engine.warmup_cosine(4, 4, 2):.3g})"]
    lr = {r["step"]: r["lr"] for r in RunLog(run).records if "lr" in r}
    for s in range(5, 9):
        assert lr[s] == pytest.approx(1e-3 * engine.warmup_cosine(s, 8, 2)), s
    assert load_checkpoint(run / "last.pt")["train_param"]["learning_rate"] == 1e-3


def test_stage2_resume_refuses_another_batch_size_and_leaves_the_run(ws, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run_stage2(ws, run, "--max-steps", "1")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    argv = stage2_argv(ws, run, "--resume", "--batch-size", "2")
    monkeypatch.setattr(sys, "argv", ["training_transformer.py", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(stage2.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "batch_size is 2 now" in err[0], err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_nan_weights_are_never_saved_and_the_message_names_a_finite_checkpoint(ws, tmp_path, monkeypatch):
    real_step = stage2.train_step
    calls = []

    def poisoned(s, *args, **kwargs):
        out = real_step(s, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the weights go bad in step 3 while its loss was still finite
            with torch.no_grad():
                next(s.model.transformer.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(stage2, "train_step", poisoned)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"is NaN or infinite at step 3; stopping without saving\. .*last\.pt holds "
                                        r"the last good weights .* --resume and a lower --learning-rate"):
        run_stage2(ws, run, "--save-every", "1")
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 2 and engine.first_nonfinite(state) is None
    monkeypatch.setattr(stage2, "train_step", real_step)
    _, step = run_stage2(ws, run, "--resume", "--learning-rate", "1e-3", "--max-steps", "3")  # what it says works
    assert step == 3


class Killed(Exception):
    """Stands for SIGKILL in the middle of save_run."""


def test_kill_between_best_and_plain_weights_then_resume(ws, tmp_path, monkeypatch, capsys):
    real_save = engine.save_checkpoint

    def dies_at_plain_weights(obj, path):
        if Path(path).name == "transformer.pt":
            raise Killed
        real_save(obj, path)

    monkeypatch.setattr(engine, "save_checkpoint", dies_at_plain_weights)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        run_stage2(ws, run, "--save-every", "1")  # killed at step 4's save, the first validation
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 3 and last["best_val_loss"] == float("inf")  # claims no best
    assert load_checkpoint(run / "best.pt")["step"] == 4 and not (run / "transformer.pt").exists()

    # on resume the plain weights are rewritten from best.pt, then the run goes on
    capsys.readouterr()
    engine.resume_source(run, True, weights=("transformer.pt", "model"))
    assert f"rewrote {run / 'transformer.pt'} from {run / 'best.pt'}" in capsys.readouterr().out
    assert_same_weights(load_checkpoint(run / "transformer.pt"), load_checkpoint(run / "best.pt")["model"])
    run_stage2(ws, run, "--resume")
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert done.endswith(f"weights in {run / 'transformer.pt'}"), done
    assert_same_weights(load_checkpoint(run / "transformer.pt"), load_checkpoint(run / "best.pt")["model"])

    # plain weights older than best.pt (a kill at a later best) are rewritten too; newer ones are kept
    stale = {k: torch.zeros_like(v) for k, v in load_checkpoint(run / "transformer.pt").items()}
    save_checkpoint(stale, run / "transformer.pt")
    best_time = (run / "best.pt").stat().st_mtime_ns
    os.utime(run / "transformer.pt", ns=(best_time - 10**9, best_time - 10**9))
    engine.resume_source(run, True, weights=("transformer.pt", "model"))
    assert_same_weights(load_checkpoint(run / "transformer.pt"), load_checkpoint(run / "best.pt")["model"])
    save_checkpoint(stale, run / "transformer.pt")
    engine.resume_source(run, True, weights=("transformer.pt", "model"))
    assert_same_weights(load_checkpoint(run / "transformer.pt"), stale)


def test_orphaned_temp_files_of_dead_writers_are_removed(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    names = {"dead": f".last.{dead.pid}.tmp.pt", "dead_png": f".curves.{dead.pid}.tmp.png",
             "live": f".best.{os.getpid()}.tmp.pt", "user": f"notes.{dead.pid}.tmp.txt", "log": "log.jsonl"}
    for name in names.values():
        (run / name).write_text("x")
    engine.resume_source(run, False, weights=("transformer.pt", "model"))
    assert sorted(p.name for p in run.iterdir()) == sorted([names["live"], names["user"], names["log"]])
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"removed 2 temporary file(s) left by killed writes in {run}: {names['dead_png']}, {names['dead']}"]


def test_run_log_drops_a_truncated_last_line_and_refuses_a_damaged_one(ws, tmp_path, capsys):
    run = tmp_path / "run"
    run_stage2(ws, run, "--max-steps", "2", "--save-every", "1")
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 2.')  # a write killed mid-line
    capsys.readouterr()
    run_stage2(ws, run, "--resume", "--max-steps", "3")
    assert "warning: dropped the last line of" in capsys.readouterr().err
    assert records(run, "step")[-1] == 3 and all(line.endswith("}") for line in
                                                (run / "log.jsonl").read_text().splitlines())

    lines = (run / "log.jsonl").read_text().splitlines()
    damaged = "\n".join([lines[0], "{not json", *lines[1:]]) + "\n"
    (run / "log.jsonl").write_text(damaged)
    with pytest.raises(UserError, match=r"log\.jsonl line 2 is not a JSON record"):
        RunLog(run)
    assert (run / "log.jsonl").read_text() == damaged


def test_hole_context_is_what_decoding_encodes(ws):
    """The pre-filled context of a training sample equals decoding's encoding of the same view with
    the same hole pre-filled by the nearest known pixels; samples without a hole keep their tokens."""
    from data.masks import pixel_hole_bank
    from maskgit_inpaint.blending import nearest_filled

    model = load_maskgit(load_maskgit_config(ws.config), vqgan_ckpt=ws.vq_ckpt)
    train_set = ImageFolderDataset(ws.train, model.vqgan.cfg["mean"], model.vqgan.cfg["std"], size=16)
    bank = pixel_hole_bank(8, 16, seed=5)
    context = stage2.HoleContext(stage2.load_uint8_images(train_set), bank, train_set.mean, train_set.std, True)
    idx, views, picks = torch.tensor([3, 5, 7]), torch.tensor([1, 0, 0]), torch.tensor([2, -1, 6])
    z = torch.full((3, 16), 99, dtype=torch.long)
    got = context.tokens(model, z, idx, views, picks)
    assert got[1].tolist() == [99] * 16  # no hole: the clean tokens stay
    for row in (0, 2):
        view = train_set[int(idx[row])][None]
        view = view.flip(-1) if views[row] else view
        hole = torch.from_numpy(bank[int(picks[row])])[None, None]
        expected = model.encode_to_z(nearest_filled(view, hole))[1][0]
        assert torch.equal(got[row], expected)
    assert not torch.equal(got[0], model.encode_to_z(train_set[3][None].flip(-1))[1][0])  # the hole shows


def test_hole_token_share_keeps_the_mostly_known_tokens_of_a_training_hole_as_context(ws, monkeypatch):
    """With hole_token_share S a training hole holds only the tokens more than S hole, as decoding
    regenerates them; the pre-filled context is drawn from the same pixel holes, and a hole left with
    no token is dropped from the bank."""
    monkeypatch.setattr(stage2, "HOLE_BANK_SIZE", 512)
    model = load_maskgit(load_maskgit_config(ws.config), vqgan_ckpt=ws.vq_ckpt)
    vq = model.vqgan.cfg
    train_set = ImageFolderDataset(ws.train, vq["mean"], vq["std"], size=vq["img_resolution"])
    tcfg = {"hole_mask_share": 0.5, "hole_context": "prefilled", "flip": True}
    banks = {share: stage2.hole_sampling({**tcfg, "hole_token_share": share}, vq, train_set, seed=2)
             for share in (0.0, 0.5)}
    (anywhere, _), (mostly, context) = banks[0.0], banks[0.5]
    side, latent = vq["img_resolution"], vq["latent_resolution"]
    pixels = context.sources != torch.arange(side * side)  # (K, H*W): a hole pixel is filled from elsewhere
    assert torch.equal(mostly, pixel_to_token_mask(pixels.view(-1, 1, side, side), latent, above=0.5))
    assert mostly.any(1).all() and len(mostly) < len(anywhere) == 512
    assert 0 < mostly.sum() < pixel_to_token_mask(pixels.view(-1, 1, side, side), latent).sum()


def test_prefilled_context_is_shown_outside_the_hole_and_the_clean_tokens_inside(ws, monkeypatch):
    model = load_maskgit(load_maskgit_config(ws.config), vqgan_ckpt=ws.vq_ckpt)
    seen = {}
    monkeypatch.setattr(model.transformer, "forward", lambda tokens: seen.setdefault("input", tokens))
    z, context = torch.arange(16).repeat(2, 1), torch.full((2, 16), 15)
    within = torch.zeros(2, 16, dtype=torch.bool)
    within[:, :6] = True
    _, targets, mask = model(z, within=within, context=context)
    shown = seen["input"]
    assert torch.equal(targets, z)
    assert (shown[mask] == model.mask_token_id).all() and mask[:, 6:].sum() == 0
    assert torch.equal(shown[:, 6:], context[:, 6:])  # outside the hole: the pre-filled context
    assert torch.equal(shown[~mask & within], z[~mask & within])  # inside, not masked: the clean tokens


def test_stage2_prefilled_context_and_augmentations_resume_exactly(ws, tmp_path):
    config = maskgit_config(ws, tmp_path / "maskgit_prefilled.yml", "flip: true\n  hole_mask_share: 0.5\n"
                            "  hole_context: prefilled\n  shift_tokens: 1\n  colour_variants: 3")
    flags = ("--MaskGitConfig", str(config), "--save-every", "100")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage2(ws, straight, *flags, "--max-steps", "4")
    run_stage2(ws, resumed, *flags, "--max-steps", "2")
    run_stage2(ws, resumed, *flags, "--max-steps", "4", "--resume")
    assert_same_weights(load_checkpoint(straight / "last.pt")["model"], load_checkpoint(resumed / "last.pt")["model"])
    clean = tmp_path / "clean"
    config.write_text(config.read_text().replace("hole_context: prefilled", "hole_context: clean"))
    run_stage2(ws, clean, *flags, "--max-steps", "4")
    assert not torch.equal(load_checkpoint(clean / "last.pt")["model"]["tok_emb.weight"],
                           load_checkpoint(straight / "last.pt")["model"]["tok_emb.weight"])


def test_view_pixels_reorders_the_channels_then_mirrors():
    """View v of training_views is colour variant v // 2 (COLOUR_ORDERS after the image's own
    colours), mirrored when v is odd, or colour variant v without flip; a colour variant keeps grays gray."""
    assert training_views(0, True) == 2 and training_views(3, True) == 8 and training_views(2, False) == 3
    pixels = torch.zeros(1, 3, 2, 3)
    pixels[0, :, 0, 0] = torch.tensor([10.0, 20.0, 30.0])  # top left: R 10, G 20, B 30
    pixels[0, :, 1, 2] = 128.0  # bottom right: gray
    batch = pixels.expand(6, -1, -1, -1)
    got = view_pixels(batch, torch.tensor([0, 1, 2, 3, 4, 5]), flip=True)
    assert got[0].tolist() == pixels[0].tolist()
    assert got[1].tolist() == pixels[0].flip(-1).tolist()
    assert got[2, :, 0, 0].tolist() == [20.0, 30.0, 10.0]  # (1, 2, 0): R takes G, G takes B, B takes R
    assert got[3, :, 0, 2].tolist() == [20.0, 30.0, 10.0]  # the same, mirrored: top right
    assert got[4, :, 0, 0].tolist() == [30.0, 10.0, 20.0]  # (2, 0, 1)
    assert (got[[0, 2, 4], :, 1, 2] == 128).all() and (got[[1, 3, 5], :, 1, 0] == 128).all()
    no_mirrors = view_pixels(batch[:3], torch.tensor([0, 1, 2]), flip=False)
    assert no_mirrors[1, :, 0, 0].tolist() == [20.0, 30.0, 10.0]
    assert no_mirrors[2, :, 0, 0].tolist() == [30.0, 10.0, 20.0]


def test_colour_variants_are_cached_as_the_tokens_of_the_recoloured_images(ws, tmp_path):
    """With colour_variants 2 the cache holds 6 views of each image: its own colours and the two
    first channel orders, each also mirrored, as the VQGAN encodes those pictures; the val tokens
    and the image's own views are the same as without variants, in a cache of their own."""
    cache = tmp_path / "cache"
    run_stage2(ws, tmp_path / "plain", "--max-steps", "1", cache=cache)
    colours = maskgit_config(ws, tmp_path / "maskgit_colours.yml", "flip: true\n  colour_variants: 2")
    run_stage2(ws, tmp_path / "colours", "--max-steps", "1", "--MaskGitConfig", str(colours), cache=cache)
    entries = {load_checkpoint(f)["tokens"].shape: load_checkpoint(f)["tokens"] for f in cache.glob("train-*.pt")}
    assert set(entries) == {(16, 2, 16), (16, 6, 16)} and len(list(cache.glob("val-*.pt"))) == 1
    plain, tokens = entries[(16, 2, 16)], entries[(16, 6, 16)]
    assert torch.equal(tokens[:, :2], plain)
    model = load_maskgit(str(ws.config))
    vq = model.vqgan.cfg
    pixels = np.asarray(Image.open(sorted(ws.train.iterdir())[3]).convert("RGB"))
    for view, (order, mirrored) in enumerate([((0, 1, 2), False), ((0, 1, 2), True), ((1, 2, 0), False),
                                              ((1, 2, 0), True), ((2, 0, 1), False), ((2, 0, 1), True)]):
        recoloured = pixels[:, :, list(order)][:, ::-1] if mirrored else pixels[:, :, list(order)]
        image = normalize(np.ascontiguousarray(recoloured)[None], vq["mean"], vq["std"])
        assert torch.equal(tokens[3, view].long(), model.encode_to_z(image)[1][0]), view
    assert not torch.equal(tokens[:, 2], tokens[:, 0])  # the colours change the codes


def test_prefilled_context_of_a_colour_variant_is_the_recoloured_image_prefilled(ws):
    """HoleContext shows the transformer, around the hole, the tokens of the same view the cached
    tokens come from: the recoloured (and mirrored) image, pre-filled."""
    from data.masks import pixel_hole_bank
    from maskgit_inpaint.blending import nearest_filled

    model = load_maskgit(load_maskgit_config(ws.config), vqgan_ckpt=ws.vq_ckpt)
    vq = model.vqgan.cfg
    train_set = ImageFolderDataset(ws.train, vq["mean"], vq["std"], size=16)
    bank = pixel_hole_bank(8, 16, seed=5)
    context = stage2.HoleContext(stage2.load_uint8_images(train_set), bank, vq["mean"], vq["std"], True)
    idx, views, picks = torch.tensor([3, 5]), torch.tensor([3, 4]), torch.tensor([2, 6])
    got = context.tokens(model, torch.zeros(2, 16, dtype=torch.long), idx, views, picks)
    for row, (order, mirrored) in enumerate([((1, 2, 0), True), ((2, 0, 1), False)]):
        pixels = np.asarray(Image.open(train_set.files[int(idx[row])]).convert("RGB"))[:, :, list(order)]
        image = normalize(np.ascontiguousarray(pixels[:, ::-1] if mirrored else pixels)[None], vq["mean"], vq["std"])
        hole = torch.from_numpy(bank[int(picks[row])])[None, None]
        assert torch.equal(got[row], model.encode_to_z(nearest_filled(image, hole))[1][0]), row


def test_token_shifts_move_the_grid_by_whole_tokens_and_repeat_the_edge():
    """Each sample's source index is one move (dy, dx) within the limit, edge tokens repeated (not
    wrapped around), and every move of the range is drawn."""
    torch.manual_seed(0)
    side, limit = 5, 2
    sources = stage2.token_shifts(400, side, limit)
    grid = np.arange(side * side).reshape(side, side)
    pos = np.arange(side)
    seen = set()
    for source in sources.numpy():
        matches = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
                   if np.array_equal(source.reshape(side, side),
                                     grid[np.clip(pos - dy, 0, side - 1)][:, np.clip(pos - dx, 0, side - 1)])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == (2 * limit + 1) ** 2


def test_shift_moves_the_tokens_their_hole_and_context_together(ws, monkeypatch):
    """With shift_tokens on, the transformer is trained on the moved targets, inside the moved hole,
    with the moved pre-filled context around it."""
    model = load_maskgit(load_maskgit_config(ws.config), vqgan_ckpt=ws.vq_ckpt)
    optimizer = torch.optim.SGD(model.transformer.parameters(), lr=0.0)
    s = stage2.Stage2(model, model, optimizer, engine.lr_scheduler(optimizer, 10, 0))
    seen, forward = {}, model.forward
    monkeypatch.setattr(model, "forward", lambda z, within=None, context=None: (
        seen.update(z=z, within=within, context=context), forward(z, within=within, context=context))[1])
    down_one = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])  # 4x4 grid moved one row down
    monkeypatch.setattr(stage2, "token_shifts", lambda batch, side, limit: down_one.repeat(batch, 1))
    hole = torch.zeros(1, 16, dtype=torch.bool)
    hole[0, [5, 6, 9, 10]] = True
    context = SimpleNamespace(tokens=lambda model, z, idx, views, picks: 15 - z)
    tokens = torch.arange(16).repeat(4, 1, 1)  # (N, views, h*w)
    tcfg = {"hole_mask_share": 1.0, "shift_tokens": 1, "grad_clip": 1.0}
    stage2.train_step(s, tokens, torch.tensor([[0, 1, 2, 3]]), tcfg, 0.0, 0, ws.root / "unused.pt", 1, hole,
                      context)
    assert torch.equal(seen["z"], down_one.repeat(4, 1))
    assert torch.equal(seen["context"], 15 - down_one.repeat(4, 1))
    assert seen["within"][0].nonzero().flatten().tolist() == [9, 10, 13, 14]


def test_the_labs_spellings_are_aliases_of_the_flags():
    """Every lab spelling in the one table sets the same option as this repository's flag."""
    lab = ["--MaskGitConfig", "c.yml", "--train_d_path", "a", "b", "--val_d_path", "v", "--checkpoint-path", "r",
           "--ckpt-interval", "7", "--num_workers", "3"]
    ours = ["--config", "c.yml", "--train-path", "a", "b", "--val-path", "v", "--run-dir", "r",
            "--save-every", "7", "--num-workers", "3"]
    assert vars(stage2.parse_args(lab)) == vars(stage2.parse_args(ours))
    assert vars(stage1.parse_args(lab)) == vars(stage1.parse_args(ours))
    assert stage2.parse_args(lab).save_every == 7 and stage2.parse_args(lab).train_path == ["a", "b"]


def test_stage2_run_folder_keeps_no_optimizer_copies_and_knows_its_config(ws, tmp_path):
    """best.pt is the best weights and their record (no optimizer or schedule state, which only
    last.pt needs); --export finds the run's config and VQGAN in best.pt, without --MaskGitConfig."""
    run = tmp_path / "run"
    run_stage2(ws, run, "--max-steps", "2")
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert {"optimizer", "scheduler", "rng"} <= last.keys() and not {"optimizer", "scheduler", "rng"} & best.keys()
    assert_same_weights(best["model"], load_checkpoint(run / "transformer.pt"))
    sizes = {f.name: f.stat().st_size for f in run.glob("*.pt")}
    assert sizes["best.pt"] < 0.6 * sizes["last.pt"], sizes  # AdamW keeps two tensors per weight
    exported = tmp_path / "exported"
    stage2.main(["--checkpoint-path", str(run), "--export", str(exported)])  # the default config is another
    assert MaskGit.from_pretrained(exported).transformer.tok_emb.weight.shape == best["model"]["tok_emb.weight"].shape


def test_stage2_help_says_whole_sentences(capsys):
    with pytest.raises(SystemExit):
        stage2.parse_args(["--help"])
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.rstrip().endswith("tokens of a frozen stage-1 VQGAN.")
