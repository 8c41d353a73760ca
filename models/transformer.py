"""Stage 2: a bidirectional (BERT-style) transformer over the 16x16 grid of VQGAN tokens.

The layer layout follows the lab's BidirectionalTransformer: token + learned positional embedding,
post-LayerNorm encoder blocks, a token-prediction head, and logits tied to the token embedding plus
a learned per-position bias. Token id `num_codebook_vectors` is the mask token.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_KINDS = ("manual", "sdpa")
INIT_STD = 0.02  # of linear and embedding weights (BERT's)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention written out step by step.

    `attention="sdpa"` computes the same core (softmax(QK^T / sqrt(d)) V with attention dropout)
    with torch's fused scaled_dot_product_attention; the parameters are the same for both paths.
    """

    def __init__(self, dim: int = 768, num_heads: int = 16, attn_drop: float = 0.1, attention: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention = attention
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.out_proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, heads, N, N)
            weights = self.attn_drop(torch.softmax(scores, dim=-1))
            out = weights @ v  # (B, heads, N, head_dim)
        out = out.transpose(1, 2).reshape(b, n, dim)  # merge heads
        return self.out_proj(out)


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.1):
        super().__init__(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Post-LN transformer block: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, dim: int, hidden_dim: int, num_heads: int, dropout: float, attn_dropout: float,
                 attention: str):
        super().__init__()
        self.attention = MultiHeadAttention(dim, num_heads, attn_dropout, attention)
        self.layer_norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.layer_norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = MLP(dim, hidden_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm1(x + self.dropout(self.attention(x)))
        return self.layer_norm2(x + self.mlp(x))


class TokenPredictor(nn.Sequential):
    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=1e-12))


class BidirectionalTransformer(nn.Module):
    """Token ids (B, N) in [0, num_codebook_vectors] -> logits (B, N, num_codebook_vectors + 1)."""

    def __init__(self, cfg: dict):
        """`cfg` is the checked Transformer_param of a MaskGit config (models.config)."""
        super().__init__()
        dim = cfg["dim"]
        self.num_image_tokens = cfg["num_image_tokens"]
        vocab = cfg["num_codebook_vectors"] + 1  # + the mask token
        dropout = cfg["dropout"]
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(self.num_image_tokens, dim), 0.0, 0.02))
        self.blocks = nn.Sequential(*[
            EncoderBlock(dim, cfg["hidden_dim"], cfg["num_heads"], dropout,
                         dropout if cfg["attn_dropout"] is None else cfg["attn_dropout"], cfg["attention"])
            for _ in range(cfg["n_layers"])
        ])
        self.token_prediction = TokenPredictor(dim)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(self.num_image_tokens, vocab))
        self.apply(init_weights)

    def set_attention(self, kind: str) -> None:
        """Switch every block between the hand-written and the fused attention core."""
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        for block in self.blocks:
            block.attention.attention = kind

    @torch.no_grad()
    def init_token_embedding(self, codebook: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Start the code embeddings (K, dim) from the VQGAN codebook (K, d) instead of noise: the
        centred codebook through a random orthonormal map d -> dim, scaled to the usual init std.
        Codes that decode to similar patches then start with similar input embeddings and, since the
        output logits are tied to this table, with similar logits. The mask token's row is kept."""
        k, d = codebook.shape
        dim = self.tok_emb.weight.shape[1]
        if k != self.tok_emb.weight.shape[0] - 1:
            raise ValueError(f"codebook has {k} codes, the transformer {self.tok_emb.weight.shape[0] - 1}")
        if d > dim:
            raise ValueError(f"codebook vectors ({d}) are wider than the transformer ({dim})")
        centred = codebook.float() - codebook.float().mean(0)
        # drawn on the generator's device (the CPU's by default), so that every device starts the same
        noise = torch.randn(dim, d, generator=generator, device=generator.device if generator else "cpu")
        projection, _ = torch.linalg.qr(noise)  # (dim, d), orthonormal columns
        embedding = centred @ projection.to(centred.device).T  # (K, dim)
        self.tok_emb.weight[:k] = embedding * (INIT_STD / embedding.std())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.layer_norm(self.tok_emb(tokens) + self.pos_emb))  # (B, N, dim)
        x = self.token_prediction(self.blocks(x))
        return x @ self.tok_emb.weight.t() + self.bias  # (B, N, vocab)


def init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
