"""Transformer attention paths, mask schedules, MVTM masking, iterative decoding, config checks."""
import math
from pathlib import Path

import pytest
import torch
from tiny_configs import TINY_MASKGIT, TINY_VQGAN

from common import UserError
from models import GAMMA_FUNCTIONS, VQGAN, BidirectionalTransformer, MaskGit, gamma_func, masked_counts
from models.config import load_maskgit_config, load_vqgan_config, transformer_param
from models.maskgit import default_precision, sample_tokens
from models.schedules import halton_ranks, radical_inverse

ROOT = Path(__file__).resolve().parents[1]

# MaskGit.inpaint has no decoding defaults of its own (maskgit_inpaint.Decoding owns them); these
# tests decode with T = 8, sampled tokens at temperature 1 from every code (top-p 1) and the confidence
# scheduler unless they say
SAMPLED = {"total_iter": 8, "sample_temperature": 1.0, "top_p": 1.0, "readout": "sample", "scheduler": "confidence"}


def decode(model: MaskGit, z: torch.Tensor, mask: torch.Tensor, **settings):
    return model.inpaint(z, mask, **{**SAMPLED, **settings})


def write_tiny_configs(folder: Path, gamma: str = "cosine", dim: int = 32) -> Path:
    (folder / "vqgan.yml").write_text(TINY_VQGAN)
    path = folder / "maskgit.yml"
    text = TINY_MASKGIT.replace("gamma_type: cosine", f"gamma_type: {gamma}").replace("dim: 32", f"dim: {dim}")
    path.write_text(text)
    return path


@pytest.fixture
def tiny_maskgit(tmp_path) -> MaskGit:
    torch.manual_seed(0)
    return MaskGit(load_maskgit_config(write_tiny_configs(tmp_path))).eval()


# ----------------------------------------------------------------------------- transformer

def test_attention_paths_agree_for_same_weights():
    torch.manual_seed(0)
    cfg = {"num_image_tokens": 256, "num_codebook_vectors": 1024, "dim": 64, "n_layers": 2, "hidden_dim": 128,
           "num_heads": 8, "attention": "manual"}
    model = BidirectionalTransformer(transformer_param(**cfg)).eval()
    tokens = torch.randint(0, 1025, (3, 256))
    manual = model(tokens)
    model.set_attention("sdpa")
    fused = model(tokens)
    torch.testing.assert_close(fused, manual, atol=1e-5, rtol=1e-5)
    assert manual.shape == (3, 256, 1025)
    assert manual.std() > 0.1  # a real, non-degenerate output


def test_manual_attention_matches_explicit_formula():
    torch.manual_seed(1)
    cfg = {"num_image_tokens": 8, "num_codebook_vectors": 4, "dim": 16, "n_layers": 1, "hidden_dim": 32,
           "num_heads": 4, "attention": "manual"}
    attn = BidirectionalTransformer(transformer_param(**cfg)).blocks[0].attention.eval()
    x = torch.randn(2, 8, 16)
    q, k, v = attn.query(x), attn.key(x), attn.value(x)
    heads = []
    for h in range(4):
        sl = slice(4 * h, 4 * h + 4)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)
        heads.append(w @ v[..., sl])
    torch.testing.assert_close(attn(x), attn.out_proj(torch.cat(heads, -1)))


def test_logits_tied_to_token_embedding_plus_bias():
    cfg = {"num_image_tokens": 4, "num_codebook_vectors": 6, "dim": 8, "n_layers": 1, "hidden_dim": 16,
           "num_heads": 2}
    model = BidirectionalTransformer(transformer_param(**cfg)).eval()
    assert model.tok_emb.weight.shape == (7, 8) and model.bias.shape == (4, 7)
    with torch.no_grad():
        model.bias.fill_(0.0)
        base = model(torch.zeros(1, 4, dtype=torch.long))
        model.bias[2, 5] = 3.0
        model.tok_emb.weight[6].zero_()  # the mask token's row
        shifted = model(torch.zeros(1, 4, dtype=torch.long))
    assert torch.allclose(shifted[0, 2, 5] - base[0, 2, 5], torch.tensor(3.0))
    assert torch.allclose(shifted[0, :, 6], model.bias[:, 6])


# ----------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("mode", sorted(GAMMA_FUNCTIONS))
def test_schedule_end_points_and_monotone(mode):
    gamma = gamma_func(mode)
    assert gamma(0.0) == pytest.approx(1.0, abs=1e-12)
    assert gamma(1.0) == pytest.approx(0.0, abs=1e-12)
    values = [gamma(i / 200) for i in range(201)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_schedule_formulas():
    assert gamma_func("cosine")(1 / 3) == pytest.approx(math.cos(math.pi / 6))
    assert gamma_func("square")(0.5) == pytest.approx(0.75)
    assert gamma_func("cubic")(0.5) == pytest.approx(0.875)
    assert gamma_func("sqrt")(0.25) == pytest.approx(0.5)
    assert gamma_func("linear")(0.3) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="valid: linear"):
        gamma_func("zigzag")


def test_masked_counts_formula_and_strict_decrease():
    n0 = torch.tensor([0, 1, 3, 100, 256])
    counts = masked_counts(n0, 8, "cosine")
    for b, n in enumerate(n0.tolist()):
        previous = n
        for t in range(8):
            k = min(math.floor(math.cos((t + 1) / 8 * math.pi / 2) * n), max(previous - 1, 0)) if t < 7 else 0
            assert counts[b, t] == k
            previous = k
    # 3 hole tokens in 8 steps: the formula would keep 2 for several steps; it must fall by one each step
    assert counts[2].tolist() == [2, 1, 0, 0, 0, 0, 0, 0]
    assert counts[4, 0] == math.floor(math.cos(math.pi / 16) * 256)


# ----------------------------------------------------------------------------- MVTM

def test_mvtm_mask_counts(tiny_maskgit):
    generator = torch.Generator().manual_seed(3)
    z = torch.randint(0, 16, (64, 16))
    mask_gen = torch.Generator().manual_seed(3)
    logits, targets, mask = tiny_maskgit(z, generator=generator)
    r = torch.rand(64, generator=mask_gen)
    expected = torch.tensor([max(1, math.ceil(math.cos(v * math.pi / 2) * 16)) for v in r.tolist()])
    assert torch.equal(mask.sum(1), expected)
    assert logits.shape == (64, 16, 17) and torch.equal(targets, z)
    assert len(set(mask.sum(1).tolist())) > 3  # ratios really vary per sample


def test_mvtm_mask_inside_a_region(tiny_maskgit):
    generator, mask_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    within = torch.zeros(64, 16, dtype=torch.bool)
    for i in range(64):
        within[i, : 1 + i % 16] = True  # regions of 1 to 16 tokens
    _, _, mask = tiny_maskgit(torch.randint(0, 16, (64, 16)), generator=generator, within=within)
    assert not (mask & ~within).any()  # never outside the region
    r = torch.rand(64, generator=mask_gen)
    sizes = within.sum(1).tolist()
    expected = [max(1, math.ceil(math.cos(v * math.pi / 2) * n)) for v, n in zip(r.tolist(), sizes)]
    assert mask.sum(1).tolist() == expected


def test_token_embedding_from_codebook_keeps_its_geometry():
    torch.manual_seed(0)
    transformer = BidirectionalTransformer(transformer_param(
        num_image_tokens=16, num_codebook_vectors=16, dim=32, n_layers=1, hidden_dim=64, num_heads=4))
    mask_row = transformer.tok_emb.weight[16].clone()
    codebook = torch.randn(16, 8) * 3 + 5
    transformer.init_token_embedding(codebook, torch.Generator().manual_seed(1))
    emb = transformer.tok_emb.weight[:16]
    centred = codebook - codebook.mean(0)
    # an orthonormal map keeps inner products: the Gram matrices agree up to the one scale factor
    gram_emb, gram_code = emb @ emb.T, centred @ centred.T
    torch.testing.assert_close(gram_emb / gram_emb[0, 0], gram_code / gram_code[0, 0], atol=1e-4, rtol=1e-4)
    assert emb.std().item() == pytest.approx(0.02, rel=1e-4)
    assert torch.equal(transformer.tok_emb.weight[16], mask_row)
    with pytest.raises(ValueError, match="wider"):
        transformer.init_token_embedding(torch.randn(16, 64))


@pytest.mark.parametrize("attn_dropout, expected", [(None, 0.3), (0.0, 0.0), (0.2, 0.2)])
def test_attention_dropout_has_its_own_key(attn_dropout, expected):
    transformer = BidirectionalTransformer(transformer_param(
        num_image_tokens=16, num_codebook_vectors=16, dim=32, n_layers=1, hidden_dim=64, num_heads=4,
        dropout=0.3, attn_dropout=attn_dropout))
    block = transformer.blocks[0]
    assert block.attention.attn_drop.p == expected and block.dropout.p == 0.3 and transformer.drop.p == 0.3


def test_mvtm_replaces_masked_tokens_by_mask_id(tiny_maskgit):
    seen = {}
    tiny_maskgit.transformer.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    z = torch.randint(0, 16, (8, 16))
    _, _, mask = tiny_maskgit(z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen["x"][mask], torch.full((int(mask.sum()),), 16))
    assert torch.equal(seen["x"][~mask], z[~mask])


# ----------------------------------------------------------------------------- decoding

class RecordingStub(torch.nn.Module):
    """Stands in for the transformer: random logits that favour the mask id, and a log of inputs."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.inputs = []

    def logits(self, call: int, shape: torch.Size) -> torch.Tensor:
        logits = torch.randn(*shape, self.vocab, generator=torch.Generator().manual_seed(call))
        logits[..., -1] = 50.0  # the mask id would win if it were allowed
        return logits

    def forward(self, tokens):
        self.inputs.append(tokens.clone())
        return self.logits(len(self.inputs), tokens.shape)


def hole_masks(batch: int, n: int, sizes: list[int]) -> torch.Tensor:
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b, size in enumerate(sizes):
        mask[b, torch.randperm(n, generator=torch.Generator().manual_seed(b))[:size]] = True
    return mask


@pytest.mark.parametrize("sizes", [[7], [16, 1, 9, 0, 4]])
@pytest.mark.parametrize("use_stub", [True, False])
def test_decoding_invariants(tiny_maskgit, sizes, use_stub):
    if use_stub:
        tiny_maskgit.transformer = RecordingStub(17)
    batch, n, total = len(sizes), 16, 6
    z = torch.randint(0, 16, (batch, n))
    mask = hole_masks(batch, n, sizes)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(batch)]
    tokens, steps, _ = decode(tiny_maskgit, z, mask, total_iter=total, mask_func="linear", generators=gens,
                                         return_history=True)
    history = steps.masks
    assert torch.equal(tokens[~mask], z[~mask])  # known tokens unchanged
    assert (tokens < 16).all()  # no mask id, everything filled
    assert len(history) == total + 1 and torch.equal(history[0], mask) and len(steps.tokens) == total
    assert torch.equal(steps.tokens[-1], tokens)
    expected = masked_counts(mask.sum(1), total, "linear")
    for t in range(total):
        assert torch.equal(history[t + 1].sum(1), expected[:, t])
        assert not (history[t + 1] & ~mask).any()  # only hole tokens are ever masked
        assert not (history[t + 1] & ~history[t]).any()  # a decided token is never re-masked
    if use_stub:
        stub = tiny_maskgit.transformer
        for t, seen in enumerate(stub.inputs):
            assert torch.equal(seen == 16, history[t])  # the transformer saw exactly the current mask
            decided = mask & ~history[t]
            assert torch.equal(seen[decided], tokens[decided])  # decided tokens are kept to the end


def test_top_p_draws_only_from_the_nucleus_renormalized():
    """Codes of probability 0.5, 0.3, 0.15, 0.05 (and the mask token, never drawn): top-p 0.7 keeps the
    first two (the mass before the third, 0.8, is not below 0.7), as 0.625 / 0.375; 0.1 keeps the top
    one only; 1 changes nothing."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.cat([probs.log(), torch.tensor([5.0])]).expand(1, 4000, 5)  # (B, N, vocab + mask)
    generators = [torch.Generator().manual_seed(0)]
    tokens, drawn_from = sample_tokens(logits, 1.0, generators, top_p=0.7)
    assert torch.allclose(drawn_from[0, 0], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert set(tokens.unique().tolist()) == {0, 1} and abs((tokens == 0).float().mean().item() - 0.625) < 0.03
    tokens, drawn_from = sample_tokens(logits, 1.0, generators, top_p=0.1)
    assert (tokens == 0).all() and torch.equal(drawn_from[0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    tokens, drawn_from = sample_tokens(logits, 1.0, generators, top_p=1.0)
    assert torch.allclose(drawn_from[0, 0], probs) and set(tokens.unique().tolist()) == {0, 1, 2, 3}


def test_decoding_is_seeded_and_per_sample(tiny_maskgit):
    z = torch.randint(0, 16, (5, 16))
    mask = hole_masks(5, 16, [16, 8, 12, 3, 10])
    run = lambda idx, seeds: decode(tiny_maskgit, z[idx], mask[idx], total_iter=5, sample_temperature=1.0,
                                                  generators=[torch.Generator().manual_seed(s) for s in seeds])[0]
    all5 = run(slice(None), range(5))
    assert torch.equal(all5, run(slice(None), range(5)))
    # sample 2 alone, with its own generator, gets the same tokens as in the batch of 5
    assert torch.equal(run(slice(2, 3), [2]), all5[2:3])
    assert not torch.equal(run(slice(None), range(100, 105)), all5)


def test_sweet_spot_stops_early_and_fills_with_that_steps_choices(tiny_maskgit):
    stub = RecordingStub(17)
    tiny_maskgit.transformer = stub
    z = torch.randint(0, 16, (2, 16))
    mask = hole_masks(2, 16, [16, 10])
    tokens, steps, _ = decode(tiny_maskgit, z, mask, total_iter=8, sweet_spot=3, sample_temperature=0,
                                         return_history=True)
    history = steps.masks
    assert len(stub.inputs) == 3 and len(history) == 4 and len(steps.tokens) == 3
    assert torch.equal(steps.tokens[-1], tokens)
    logits = stub.logits(3, z.shape)
    logits[..., 16] = -torch.inf
    still_masked = history[2]
    assert torch.equal(tokens[still_masked], logits.argmax(-1)[still_masked])
    assert (tokens < 16).all() and torch.equal(tokens[~mask], z[~mask])


def test_precision_bf16_rounds_the_transformer_and_fp32_leaves_it_exact(tiny_maskgit):
    z = torch.randint(0, 17, (2, 16))
    exact = tiny_maskgit.transformer(z)
    assert default_precision("cpu") == "fp32" and default_precision("cuda") == "bf16"
    fp32 = tiny_maskgit.predict(z)
    assert torch.equal(fp32[..., :-1], exact[..., :-1]) and torch.isinf(fp32[..., -1]).all()
    bf16 = tiny_maskgit.set_precision("bf16").predict(z)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16[..., :-1], exact[..., :-1])
    assert torch.allclose(bf16[..., :-1], exact[..., :-1], atol=0.05)  # bf16 keeps 8 bits of mantissa
    with pytest.raises(UserError, match="unknown precision 'int8'"):
        tiny_maskgit.set_precision("int8")


def test_no_hole_leaves_tokens_unchanged(tiny_maskgit):
    z = torch.randint(0, 16, (2, 16))
    tokens, _, _ = decode(tiny_maskgit, z, torch.zeros(2, 16, dtype=torch.bool), total_iter=4)
    assert torch.equal(tokens, z)



@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_mean_readout_keeps_each_tokens_distribution_from_the_step_that_committed_it(tiny_maskgit, temperature):
    stub = RecordingStub(17)
    tiny_maskgit.transformer = stub
    z = torch.randint(0, 16, (2, 16))
    mask = hole_masks(2, 16, [16, 7])
    tokens, history, probs = decode(tiny_maskgit, z, mask, total_iter=4, sample_temperature=temperature,
                                                  return_history=True, readout="mean")
    assert probs.shape == (2, 16, 16) and not probs[~mask].any()  # known tokens: no distribution
    for t in range(4):
        expected = torch.softmax(stub.logits(t + 1, z.shape)[..., :16] / temperature, -1)
        committed = history.masks[t] & ~history.masks[t + 1]  # the tokens step t decided
        assert committed.any() or not history.masks[t].any()
        torch.testing.assert_close(probs[committed], expected[committed])
        torch.testing.assert_close(history.probs[t][history.masks[t]], expected[history.masks[t]])
    torch.testing.assert_close(history.probs[-1], probs)
    sampled = decode(tiny_maskgit, z, mask, total_iter=4, sample_temperature=temperature, readout="sample")
    assert sampled.probs is None


@pytest.mark.parametrize("l2_codes", [False, True])
def test_decode_tokens_with_probs_decodes_the_expected_code_vector(tiny_maskgit, monkeypatch, l2_codes):
    codebook = tiny_maskgit.vqgan.codebook.embedding.weight.detach()  # (16, C)
    if l2_codes:  # the code vectors are the rows scaled to unit length, whatever their stored length
        tiny_maskgit.vqgan = VQGAN({**tiny_maskgit.vqgan.cfg, "l2_codes": True}).eval()
        with torch.no_grad():
            tiny_maskgit.vqgan.codebook.embedding.weight.mul_(torch.linspace(0.5, 3.0, 16)[:, None])
        stored = tiny_maskgit.vqgan.codebook.embedding.weight.detach()
        codebook = stored / stored.norm(dim=1, keepdim=True)
    tokens = torch.randint(0, 16, (1, 16))
    probs = torch.zeros(1, 16, 16)
    probs[0, 3, 2], probs[0, 3, 9] = 0.25, 0.75  # position 3: a mix of codes 2 and 9
    probs[0, 5] = torch.nn.functional.one_hot(torch.tensor(4), 16).float()  # position 5: surely code 4
    seen = []
    monkeypatch.setattr(tiny_maskgit.vqgan, "decode", lambda z, known=None, hole=None: seen.append(z) or z)
    tiny_maskgit.decode_tokens(tokens, probs)
    latents = seen[0][0].flatten(1).t()  # (N, C)
    torch.testing.assert_close(latents[3], 0.25 * codebook[2] + 0.75 * codebook[9])
    torch.testing.assert_close(latents[5], codebook[4])
    others = [i for i in range(16) if i not in (3, 5)]
    torch.testing.assert_close(latents[others], codebook[tokens[0, others]])
    tiny_maskgit.decode_tokens(tokens)  # the plain path lays the grid out the same way
    torch.testing.assert_close(seen[1][0].flatten(1).t(), codebook[tokens[0]])


# ----------------------------------------------------------------------------- configs

def test_shipped_configs_load():
    lab = load_maskgit_config(ROOT / "configs/MaskGit.yml")
    t = lab["Transformer_param"]
    assert (lab["num_image_tokens"], lab["num_codebook_vectors"], lab["choice_temperature"]) == (256, 1024, 4.5)
    assert (t["dim"], t["n_layers"], t["hidden_dim"], t["num_heads"]) == (768, 15, 1536, 16)
    small = load_maskgit_config(ROOT / "configs/small/MaskGit.yml")
    assert small["vqgan"]["num_codebook_vectors"] == 1024
    l2 = load_vqgan_config(ROOT / "configs/small/VQGAN_l2.yml")
    local = load_vqgan_config(ROOT / "configs/small/VQGAN_local.yml")
    assert (l2["l2_codes"], l2["latent_dim"], local["l2_codes"]) == (True, 8, False)
    assert {k: v for k, v in l2.items() if k not in ("l2_codes", "latent_dim")} == \
        {k: v for k, v in local.items() if k not in ("l2_codes", "latent_dim")}  # otherwise the local VQGAN


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("gamma_type: cosine", "gamma_type: wobbly"), "unknown `gamma_type`"),
    (lambda s: s.replace("dim: 32", "dim: 30"), "not divisible by `num_heads`"),
    (lambda s: s.replace("    hidden_dim: 64\n", ""), "missing key `hidden_dim`"),
    (lambda s: s.replace("num_codebook_vectors: 16", "num_codebook_vectors: 32"), "num_codebook_vectors"),
])
def test_bad_config_names_key_and_file(tmp_path, edit, message):
    path = write_tiny_configs(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(UserError, match=message) as err:
        load_maskgit_config(path)
    assert str(path) in str(err.value)


def test_codebook_mismatch_between_vqgan_and_transformer(tmp_path):
    path = write_tiny_configs(tmp_path)
    (tmp_path / "vqgan.yml").write_text(TINY_VQGAN.replace("num_codebook_vectors: 16", "num_codebook_vectors: 8"))
    with pytest.raises(UserError, match="VQGAN config .* has 8"):
        load_maskgit_config(path)


def test_vqgan_config_without_normalization_gets_the_lab_checkpoints(tmp_path):
    from models.config import load_vqgan_config

    path = tmp_path / "vqgan.yml"
    path.write_text(TINY_VQGAN)
    cfg = load_vqgan_config(path)
    assert cfg["mean"] == [0.4816, 0.4324, 0.3845] and cfg["std"] == [0.2602, 0.2518, 0.2537]
    path.write_text(TINY_VQGAN + "  mean: [0.5, 0.5]\n")
    with pytest.raises(UserError, match="`mean` needs 3 values"):
        load_vqgan_config(path)


def test_halton_order_of_the_token_grid():
    assert radical_inverse(6, 2) == 0.375 and radical_inverse(5, 3) == pytest.approx(2 / 3 + 1 / 9)
    ranks = halton_ranks(4)
    assert sorted(ranks.tolist()) == list(range(16))  # every token once
    # the points (0, 0), (1/2, 1/3), (1/4, 2/3), (3/4, 1/9) fall in cells (x, y) = (0,0), (2,1), (1,2), (3,0)
    assert [ranks[0], ranks[1 * 4 + 2], ranks[2 * 4 + 1], ranks[3]] == [0, 1, 2, 3]


def test_halton_scheduler_reveals_tokens_in_halton_order(tiny_maskgit):
    z = torch.randint(0, 16, (3, 16))
    hole = hole_masks(3, 16, [16, 9, 5])
    tokens, history, _ = decode(tiny_maskgit, z, hole, total_iter=4, scheduler="halton", return_history=True)
    order = halton_ranks(4)
    for b in range(3):
        in_hole = hole[b].nonzero().flatten()
        by_halton = in_hole[order[in_hole].argsort()]  # the hole's tokens, first revealed first
        for before, after in zip(history.masks[:-1], history.masks[1:]):
            revealed = (before[b] & ~after[b]).nonzero().flatten()
            assert set(revealed.tolist()) == set(by_halton[(~before[b][by_halton]).sum():][:len(revealed)].tolist())
        assert torch.equal(tokens[b][~hole[b]], z[b][~hole[b]])
    with pytest.raises(ValueError, match="unknown scheduler"):
        decode(tiny_maskgit, z, hole, scheduler="random")
