"""Token diagnostics and the local encoder: what a hole may change in a VQGAN's codes."""
import numpy as np
import pytest
import torch

from maskgit_inpaint.tokens import StabilityCounter, code_share_summary, flat_patches, ring_distance
from models import VQGAN
from models.vqgan import LOCAL_MARGIN

LOCAL = {"image_channels": 3, "enc_channels": [8, 16, 16], "dec_channels": [16, 16, 16], "latent_dim": 8,
         "img_resolution": 32, "latent_resolution": 8, "num_codebook_vectors": 32, "beta": 0.25,
         "enc_res_blocks": 1, "dec_res_blocks": 1, "encoder": "local"}


def test_local_encoder_latent_sees_only_its_patch_and_margin():
    torch.manual_seed(0)
    vqgan = VQGAN(LOCAL).eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    latents = vqgan.encode_latents(x)  # (1, 8, 8, 8)
    latents[0, :, 3, 5].sum().backward()
    seen = x.grad[0].abs().sum(0) > 0  # (32, 32) pixels this token's latent depends on
    rows, cols = seen.nonzero(as_tuple=True)
    # token (3, 5) covers pixels 12..15 x 20..23; the margin adds LOCAL_MARGIN on each side
    assert (rows.min().item(), rows.max().item()) == (12 - LOCAL_MARGIN, 15 + LOCAL_MARGIN)
    assert (cols.min().item(), cols.max().item()) == (20 - LOCAL_MARGIN, 23 + LOCAL_MARGIN)


def test_local_encoder_codes_two_tokens_from_a_hole_never_change():
    torch.manual_seed(1)
    vqgan = VQGAN(LOCAL).eval()
    x = torch.randn(2, 3, 32, 32)
    holed = x.clone()
    holed[:, :, 12:20, 8:14] = torch.randn(2, 3, 8, 6) * 5  # hole pixels: tokens rows 3-4, cols 2-3
    token_hole = np.zeros((8, 8), dtype=bool)
    token_hole[3:5, 2:4] = True
    far = ring_distance(token_hole) >= 2
    clean_codes = vqgan.encode(x)[1].view(2, 8, 8).numpy()
    holed_codes = vqgan.encode(holed)[1].view(2, 8, 8).numpy()
    assert (clean_codes[:, far] == holed_codes[:, far]).all()
    assert (clean_codes[:, token_hole] != holed_codes[:, token_hole]).any()


def test_global_encoder_lets_a_hole_reach_every_code():
    torch.manual_seed(2)
    vqgan = VQGAN(LOCAL | {"encoder": "global"}).eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    vqgan.encode_latents(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()  # attention and GroupNorm see the whole image


def test_ring_distance_is_chessboard_distance_to_the_hole():
    hole = np.zeros((5, 5), dtype=bool)
    hole[2, 2] = True
    d = ring_distance(hole)
    assert d[2, 2] == 0 and d[1, 1] == 1 and d[0, 2] == 2 and d[0, 0] == 2 and d[4, 3] == 2


def test_stability_counter_buckets_changes_by_distance():
    hole = np.zeros((1, 6, 6), dtype=bool)
    hole[0, 0, 0] = True
    clean = np.zeros((1, 6, 6), dtype=np.int64)
    holed = clean.copy()
    holed[0, 1, 1] = 7  # distance 1
    holed[0, 5, 5] = 7  # distance 5 -> the 4+ bucket
    holed[0, 0, 0] = 7  # in the hole: not counted
    counter = StabilityCounter()
    counter.add(clean, {"gray": holed, "nearest": clean}, hole)
    assert counter.total.tolist() == [3, 5, 7, 20]  # rings of a corner token: 3, 5, 7, then the rest
    shares = counter.shares()
    assert shares["gray"] == pytest.approx([1 / 3, 0, 0, 1 / 20])
    assert shares["nearest"] == [0, 0, 0, 0]


def test_flat_patches_and_code_summary():
    images = torch.ones(1, 3, 8, 8)
    images[0, :, :4, 4:] = 0.3           # a flat gray patch
    images[0, 0, 4:, :4] = torch.rand(4, 4)  # a textured patch
    flat, white = flat_patches(images, 2)
    assert flat[0].tolist() == [[True, True], [False, True]]
    assert white[0].tolist() == [[True, False], [False, True]]
    tokens = torch.tensor([[[3, 1], [2, 3]]])
    summary = code_share_summary(torch.bincount(tokens[white], minlength=4), tokens.numel())
    assert summary == {"share": 0.5, "codes": 1, "top_code_share": 1.0}


def test_l2_codes_quantize_by_direction_and_decode_unit_vectors():
    torch.manual_seed(4)
    vqgan = VQGAN({**LOCAL, "l2_codes": True}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        vqgan.codebook.embedding.weight.mul_(torch.rand(32, 1) * 4 + 0.25)  # stored lengths do not matter
        raw = vqgan.quant_conv(vqgan.encoder(x))  # (2, 8, 8, 8) before the code space
        stored = vqgan.codebook.embedding.weight
        unit = stored / stored.norm(dim=1, keepdim=True)  # (32, 8)
        cosine = torch.einsum("bchw,kc->bhwk", raw / raw.norm(dim=1, keepdim=True), unit)
        z_q, indices, _ = vqgan.encode(x)
        latents = vqgan.encode_latents(x)
    assert torch.equal(indices, cosine.argmax(-1).flatten())
    torch.testing.assert_close(latents.norm(dim=1), torch.ones(2, 8, 8))
    torch.testing.assert_close(z_q.norm(dim=1), torch.ones(2, 8, 8))
    torch.testing.assert_close(z_q, vqgan.codebook.lookup(indices.view(2, 8, 8)))
    plain = VQGAN(LOCAL).eval()  # without l2_codes: the nearest code by distance, as stored
    plain.load_state_dict(vqgan.state_dict())
    with torch.no_grad():
        assert not torch.equal(plain.encode(x)[1], indices)
        looked_up = plain.codebook.lookup(indices.view(2, 8, 8))
        assert torch.equal(looked_up, stored[indices].view(2, 8, 8, 8).permute(0, 3, 1, 2))
