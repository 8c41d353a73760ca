"""The VQGAN built from configs/VQGAN.yml is a drop-in for the lab's VQGAN.pt: same state-dict keys,
shapes and order, and the same function (the fingerprint arrays in fixtures/ come from the lab's
reference implementation; see ../shared/compat/README.md for how they were made)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import VQGAN
from models.config import load_vqgan_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def lab_vqgan() -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(load_vqgan_config(ROOT / "configs/VQGAN.yml")).eval()


def fingerprint_state_dict(model: VQGAN) -> dict:
    """Deterministic parameters: the i-th key in sorted order gets sin(0.7071 j + 0.61 i), scaled by kind."""
    state = {}
    for i, key in enumerate(sorted(model.state_dict())):
        shape = model.state_dict()[key].shape
        n = int(np.prod(shape))
        b = np.sin(0.7071 * np.arange(n) + 0.61 * i)
        if key.endswith("embedding.weight"):
            values = 0.5 * b
        elif len(shape) == 1 and key.endswith("weight"):
            values = 1 + 0.1 * b
        elif len(shape) == 1:
            values = 0.02 * b
        else:
            values = b * np.sqrt(3 / (n / shape[0]))
        state[key] = torch.from_numpy(values.reshape(shape).astype(np.float32))
    return state


def test_state_dict_keys_shapes_and_order_match_lab_checkpoint(lab_vqgan):
    reference = json.loads((FIXTURES / "lab_vqgan_state_dict.json").read_text())
    assert reference["config"] == {k: v for k, v in load_vqgan_config(ROOT / "configs/VQGAN.yml").items()
                                   if k in reference["config"]}
    ours = lab_vqgan.state_dict()
    assert list(ours) == list(reference["state_dict"])
    assert {k: list(v.shape) for k, v in ours.items()} == reference["state_dict"]


def test_reproduces_lab_fingerprint(lab_vqgan):
    lab_vqgan.load_state_dict(fingerprint_state_dict(lab_vqgan), strict=True)
    expected = np.load(FIXTURES / "lab_vqgan_fingerprint.npz")
    g = np.arange(2 * 3 * 64 * 64, dtype=np.float64).reshape(2, 3, 64, 64)
    x = torch.from_numpy((0.8 * np.sin(0.013 * g) + 0.1 * np.cos(0.0007 * g)).astype(np.float32))
    codes = torch.from_numpy(((np.arange(512) * 37 + 11) % 1024).reshape(2, 16, 16))
    with torch.no_grad():
        z_e = lab_vqgan.encode_latents(x)
        indices = lab_vqgan.codebook.nearest_indices(z_e)
        decoded = lab_vqgan.decode(lab_vqgan.codebook.lookup(codes))
        _, flat_indices, _ = lab_vqgan.encode(x)
    np.testing.assert_allclose(z_e.numpy(), expected["z_e"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(indices.numpy(), expected["indices"])
    np.testing.assert_array_equal(flat_indices.view(2, 16, 16).numpy(), expected["indices"])
    # The decoder (21 residual/attention blocks at 512 channels) amplifies float32 rounding: our float64
    # result differs from our own float32 one by ~8e-4 at the worst pixel, so the bound is on the mean
    # error (~2e-5 here) and a looser max; a wrong layer gives errors of order 0.1 to 1.
    error = np.abs(decoded.numpy() - expected["decoded"])
    assert error.mean() < 1e-4
    assert error.max() < 5e-3


def test_forward_returns_lab_triple(lab_vqgan):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded, indices, q_loss = lab_vqgan(x)
        z_q, _, _ = lab_vqgan.encode(x)
        looked_up = lab_vqgan.codebook.lookup(indices.view(2, 16, 16))
    assert decoded.shape == x.shape and indices.shape == (2 * 256,) and q_loss.ndim == 0
    torch.testing.assert_close(decoded, lab_vqgan.decode(z_q))
    # the straight-through z_q equals the chosen codes up to float rounding
    torch.testing.assert_close(z_q, looked_up, atol=1e-5, rtol=0)
    torch.testing.assert_close(lab_vqgan.decode_indices(indices.view(2, 256)), lab_vqgan.decode(looked_up))


def test_codebook_loss_and_straight_through_gradient():
    cfg = load_vqgan_config(ROOT / "configs/small/VQGAN.yml")
    model = VQGAN(cfg)
    z = torch.randn(2, cfg["latent_dim"], 4, 4, requires_grad=True)
    z_q, indices, loss = model.codebook(z)
    nearest = model.codebook.embedding.weight[indices].view(2, 4, 4, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, nearest)
    expected = (1 + cfg["beta"]) * ((nearest - z) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through: identity gradient
