"""fid/: Frechet distance vs scipy, the pytorch-fid Inception architecture and weights checks, image
loading, statistics caching and the CLI. CPU only; weights are random, written to tmp_path."""
import math
import os
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torchvision.models.inception import Inception3, InceptionA

import fid.feature_stats as feature_stats
import fid.fid_score_gpu as fsg
import fid.frechet as frechet
import fid.score as score
from common import UserError, file_sha256
from common import run_cli as cli_main
from data.ground_truth import write_gt_csv
from fid import compute_fid, compute_statistics, extract_features, frechet_distance, load_inception, open_images
from fid.inception import TRUSTED_SHA256, WEIGHTS_NAME, FIDInceptionA, FIDInceptionV3, check_state_dict, find_weights

REPO = Path(__file__).resolve().parents[1]

# A few keys of pt_inception-2015-12-05-6726825d.pth with their shapes, and its key count (without
# BatchNorm's num_batches_tracked): 94 conv+bn units x 5 tensors + fc.weight + fc.bias.
KNOWN_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch3x3dbl_3b.bn.running_var": (384,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
N_KEYS = 94 * 5 + 2


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's own key set with random values that keep activations alive (He-initialised convs)."""
    gen = torch.Generator().manual_seed(seed)
    state = FIDInceptionV3().state_dict()
    for key, value in state.items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * math.sqrt(2 / fan_in)
        elif key.endswith(("bn.bias", "running_mean", "fc.weight", "fc.bias")):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = 1 + 0.1 * torch.rand(value.shape, generator=gen)
    return state


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, state) -> Path:
    """Random weights under pytorch-fid's name, trusted as if they were its weights (TRUSTED_SHA256)."""
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_NAME
    torch.save(state, path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fid.inception.TRUSTED_SHA256", {*TRUSTED_SHA256, file_sha256(path)})
        yield path


@pytest.fixture(scope="module")
def model64(weights) -> FIDInceptionV3:
    return load_inception(weights, dims=64)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No cache in the home directory, no weights from the environment or the real hub cache."""
    monkeypatch.setenv("FID_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FID_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def random_images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def save_pngs(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


# ---- Frechet distance ----

def scipy_fid(mu1, sigma1, mu2, sigma2) -> float:
    """The reference formula, as pytorch-fid computes it."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def exact_fid(x1: np.ndarray, x2: np.ndarray) -> float:
    """FID of two samples without any matrix square root: with centred, scaled samples C1, C2
    (S = C^T C), tr sqrt(S1 S2) is the nuclear norm of the small matrix C1 C2^T."""
    c1 = (x1 - x1.mean(0)) / math.sqrt(len(x1) - 1)
    c2 = (x2 - x2.mean(0)) / math.sqrt(len(x2) - 1)
    diff = x1.mean(0) - x2.mean(0)
    nuclear = scipy.linalg.svdvals(c1 @ c2.T).sum()
    return float(diff @ diff + (c1**2).sum() + (c2**2).sum() - 2 * nuclear)


def samples(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / math.sqrt(d) + shift


def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("n,d", [(500, 64), (1000, 300)])  # 300 > the block of lower_congruence
def test_frechet_matches_scipy_on_well_conditioned(n, d):
    mu1, s1 = stats(samples(n, d, seed=1))
    mu2, s2 = stats(samples(n, d, seed=2, shift=0.2))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-6)
    tensors = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*tensors) == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.parametrize("n", [10, 30, 64])  # no more samples than dims: rank n-1 covariances
def test_frechet_on_rank_deficient(n):
    x1, x2 = samples(n, 64, seed=3), samples(n, 64, seed=4, shift=0.1)
    value = frechet_distance(*stats(x1), *stats(x2))
    assert value == pytest.approx(exact_fid(x1, x2), rel=1e-9)
    assert value == pytest.approx(scipy_fid(*stats(x1), *stats(x2)), rel=1e-6)


def test_frechet_with_fewer_images_than_dims_like_the_test_set():
    """401 test images, 2048-d non-negative (post-ReLU) features: this project's usual case."""
    rng = np.random.default_rng(9)
    mixing = rng.standard_normal((2048, 2048)) / math.sqrt(2048) * np.exp(-np.arange(2048) / 300)
    x1, x2 = (np.maximum(rng.standard_normal((401, 2048)) @ mixing.T + shift, 0) for shift in (0.0, 0.05))
    assert frechet_distance(*stats(x1), *stats(x2)) == pytest.approx(exact_fid(x1, x2), rel=1e-9)


def test_pivoted_cholesky_of_singular_covariance():
    x = samples(200, 32, seed=5)
    x[:, :4] = 1.0  # zero-variance features: plain Cholesky fails
    sigma = torch.from_numpy(np.cov(x, rowvar=False))
    assert torch.linalg.cholesky_ex(sigma)[1].item() != 0
    factor = frechet.pivoted_cholesky(sigma)
    assert factor.shape == (32, 28)
    torch.testing.assert_close(factor @ factor.T, sigma, rtol=0, atol=1e-12)
    x2 = samples(200, 32, seed=6, shift=0.3)
    assert frechet_distance(*stats(x), *stats(x2)) == pytest.approx(exact_fid(x, x2), rel=1e-9)


def test_lower_congruence_is_the_lower_triangle_of_the_product():
    sigma = torch.from_numpy(stats(samples(200, 40, seed=10))[1])
    lower = torch.linalg.cholesky(torch.from_numpy(stats(samples(200, 40, seed=11))[1]))
    expected = (lower.T @ sigma @ lower).tril()
    torch.testing.assert_close(frechet.lower_congruence(sigma, lower, block=16).tril(), expected)


def test_frechet_of_identical_statistics_is_zero():
    mu, sigma = stats(samples(300, 64, seed=7))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_rejects_bad_statistics():
    mu, sigma = stats(samples(100, 8, seed=8))
    with pytest.raises(UserError, match="do not match"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    sigma_nan = sigma.copy()
    sigma_nan[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        frechet_distance(mu, sigma_nan, mu, sigma)


# ---- architecture and weights ----

def test_state_dict_keys_match_pt_inception():
    state = FIDInceptionV3().state_dict()
    keys = {k for k in state if not k.endswith("num_batches_tracked")}
    assert len(keys) == N_KEYS
    for key, shape in KNOWN_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)


def test_fid_blocks_differ_from_torchvision_only_where_pytorch_fid_does(state):
    block_state = {k.removeprefix("Mixed_5b."): v for k, v in state.items() if k.startswith("Mixed_5b.")}
    fid_block, tv_block = FIDInceptionA(192, pool_features=32), InceptionA(192, pool_features=32)
    fid_block.load_state_dict(block_state)
    tv_block.load_state_dict(block_state)
    x = torch.rand(1, 192, 9, 9)
    with torch.no_grad():
        a, b = fid_block.eval()(x), tv_block.eval()(x)
    # the pool branch excludes the zero padding: borders differ, the interior does not
    assert torch.allclose(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], atol=1e-5)
    assert not torch.allclose(a[..., 0, :], b[..., 0, :], atol=1e-5)
    model = FIDInceptionV3()
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool


def test_end_to_end_features_on_cpu(weights):
    images = random_images(2)
    model = load_inception(weights)
    features = extract_features(images, model, batch_size=2, progress=False)
    assert features.shape == (2, 2048) and features.dtype == torch.float64
    assert torch.isfinite(features).all() and features.std(0).mean() > 1e-3
    for dims in (64, 192, 768):
        smaller = FIDInceptionV3(dims).eval()
        smaller.load_state_dict(model.state_dict())
        assert extract_features(images, smaller, progress=False).shape == (2, dims)


def test_wrong_format_weights_are_named(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, wrong)
    with pytest.raises(UserError, match=r"472 missing \(Conv2d_1a_3x3\.conv\.weight.*1 unexpected \(foo\)"):
        load_inception(wrong)
    # torchvision's ImageNet Inception-v3: AuxLogits keys and a 1000-class fc
    torchvision_state = Inception3(aux_logits=True, init_weights=False).state_dict()
    with pytest.raises(UserError, match=r"unexpected \(AuxLogits.*wrong shape \(fc\.weight, fc\.bias\)"):
        check_state_dict(torchvision_state, FIDInceptionV3(), "tv.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_inception(garbage)


def test_weights_of_the_right_shape_but_not_pytorch_fids_are_refused(weights, monkeypatch):
    """A file with every key and shape right, under the right name, whose SHA-256 is not the one its
    name says (the weights of these tests, untrusted again)."""
    monkeypatch.setattr("fid.inception.TRUSTED_SHA256", TRUSTED_SHA256)
    with pytest.raises(UserError, match=f"{weights} is not pytorch-fid's {WEIGHTS_NAME} .*not 6726825d"):
        load_inception(weights)


def test_num_batches_tracked_is_optional(state):
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    check_state_dict(old, FIDInceptionV3(), "old.pth")


def test_weights_lookup_order(tmp_path, monkeypatch, weights):
    with pytest.raises(UserError, match="not found"):
        find_weights(tmp_path / "nope.pth")
    monkeypatch.setenv("FID_INCEPTION_WEIGHTS", str(weights))
    assert find_weights() == weights
    monkeypatch.delenv("FID_INCEPTION_WEIGHTS")

    def offline(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr("fid.inception._download", offline)
    with pytest.raises(UserError, match=re.escape(f"put it at {tmp_path / 'hub' / 'checkpoints' / WEIGHTS_NAME}")):
        find_weights()
    cached = tmp_path / "hub" / "checkpoints" / WEIGHTS_NAME
    cached.parent.mkdir(parents=True)
    cached.symlink_to(weights)
    assert find_weights() == cached


# ---- inputs, statistics, caching ----

def test_csv_folder_and_array_give_the_same_statistics(tmp_path, model64):
    images = random_images(4, seed=1)
    write_gt_csv(images, tmp_path / "gt.csv")
    loaded = open_images(tmp_path / "gt.csv")
    np.testing.assert_array_equal(loaded, images)
    model = model64
    mu, sigma = compute_statistics(images, model, progress=False)
    for source in (tmp_path / "gt.csv", save_pngs(images, tmp_path / "pngs")):
        mu2, sigma2 = compute_statistics(open_images(source), model, batch_size=3, progress=False)
        np.testing.assert_allclose(mu2, mu, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(sigma2, sigma, rtol=1e-5, atol=1e-9)


def test_bad_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        open_images(tmp_path / "empty")
    with pytest.raises(UserError, match="at least 2"):
        open_images(save_pngs(random_images(1), tmp_path / "one"))
    with pytest.raises(UserError, match="uint8"):
        open_images(np.zeros((4, 8, 8, 3), dtype=np.float32))
    folder = save_pngs(random_images(3), tmp_path / "mixed")
    Image.fromarray(random_images(1, size=48)[0]).save(folder / "odd.png")
    dataset = open_images(folder)
    assert "1 of 4 images" in capsys.readouterr().err
    assert dataset[3].shape == (3, 64, 64)


def test_ground_truth_statistics_are_cached(tmp_path, model64, monkeypatch):
    calls = []
    real = feature_stats.compute_statistics

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_stats, "compute_statistics", counting)  # the cache's
    monkeypatch.setattr(score, "compute_statistics", counting)  # the predicted images'
    gt, pred = tmp_path / "gt.csv", save_pngs(random_images(3, seed=2), tmp_path / "pred")
    write_gt_csv(random_images(3, seed=3), gt)
    model = model64
    first = compute_fid(pred, gt, model=model, device="cpu", progress=False)
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second = compute_fid(pred, gt, model=model, device="cpu", progress=False)
    assert len(calls) == 3 and second == pytest.approx(first, rel=1e-12)  # ground truth from the cache
    write_gt_csv(random_images(3, seed=4), gt)  # new content: new key
    compute_fid(pred, gt, model=model, device="cpu", progress=False)
    assert len(calls) == 5
    saved = tmp_path / "gt_stats.npz"
    compute_fid(None, gt, model=model, device="cpu", save_stats=saved, progress=False)
    third = compute_fid(pred, saved, model=model, device="cpu", progress=False)
    assert third == pytest.approx(compute_fid(pred, gt, model=model, device="cpu", cache=False, progress=False))
    with pytest.raises(UserError, match="64-d statistics, not 2048-d"):
        feature_stats.load_statistics(saved, dims=2048)


def test_cuda_asked_for_but_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        compute_fid(random_images(2), random_images(2), device="cuda:0")


# ---- CLI ----

def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "fid/fid_score_gpu.py", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "FID_CACHE_DIR": str(cache), "TORCH_HOME": str(cache / "torch")}, timeout=120,
    )


def test_cli(tmp_path, weights, capsys):
    gt, pred = tmp_path / "test_gt.csv", save_pngs(random_images(3, seed=5), tmp_path / "pred")
    write_gt_csv(random_images(3, seed=6), gt)
    common = ["--device", "cpu", "--dims", "64", "--num-workers", "0", "--inception-weights", str(weights)]
    fsg.main(["--predicted-path", str(pred), "--gtcsv-path", str(gt), *common])  # in-process: the weights trusted
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("FID: ") and float(out.split()[-1]) > 0
    done = run_cli("--predicted-path", str(pred), "--gtcsv-path", str(gt), *common, cache=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [  # a process of its own does not trust them
        f"error: {weights} is not pytorch-fid's {WEIGHTS_NAME} (its SHA-256 begins {file_sha256(weights)[:8]}, not "
        "6726825d): a FID from other weights compares with no other; download it again"]

    (tmp_path / "empty").mkdir()
    done = run_cli("--predicted-path", str(tmp_path / "empty"), "--gt-path", str(gt), *common, cache=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: no images (png, jpg, webp, bmp) "
                                                                        f"in {tmp_path / 'empty'}"]

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("h\n" + ",".join(["1"] * 10) + "\n")
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, wrong)
    for args, message in [  # the same checks in-process, through the CLI's error handling
        (["--predicted-path", str(pred), "--gtcsv-path", str(bad_csv), *common], "not a square RGB image"),
        (["--predicted-path", str(pred), "--gt-path", str(gt), *common, "--inception-weights", str(wrong)],
         "missing (Conv2d_1a_3x3.conv.weight"),
        (["--gt-path", str(gt), *common], "give --predicted-path"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(lambda args=args: fsg.main(args))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_a_failed_download_leaves_no_folder_in_the_hub_cache(tmp_path, monkeypatch):
    """The network refuses (no test downloads): the UserError, and torch's hub cache as it was."""
    def refused(url, timeout):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr("urllib.request.urlopen", refused)
    with pytest.raises(UserError, match="could not download"):
        find_weights()
    assert not (tmp_path / "hub").exists()


def test_fid_of_sets_of_different_sizes_warns(model64):
    with pytest.warns(UserWarning, match="FID of 4 predicted images against 6 ground-truth images"):
        compute_fid(random_images(4), random_images(6, seed=1), model=model64, device="cpu", progress=False)
