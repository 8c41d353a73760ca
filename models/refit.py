"""A codebook refit: the same VQGAN encoder and decoder with a new codebook, the k-means centroids of
the parent VQGAN's training latents, so that look-alike codes merge into one (issue: tokens a
transformer can predict). An exported refit records its parent (config.json `refit`: the parent's
weights digest and path), which lets a transformer trained on the parent's tokens be mapped onto
the new vocabulary instead of starting from scratch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from common import UserError
from models.kmeans import nearest
from models.pretrained import is_exported, read_description, read_vqgan_weights, weights_digest
from models.vqgan import VQGAN, code_vectors

CODEBOOK = "codebook.embedding.weight"


def with_codebook(vqgan: VQGAN, codebook: torch.Tensor) -> VQGAN:
    """A copy of `vqgan` (every weight but the codebook) with `codebook` (K, C) as its K codes."""
    refit = VQGAN({**vqgan.cfg, "num_codebook_vectors": len(codebook)}).to(codebook.device)
    state = vqgan.state_dict()
    state[CODEBOOK] = codebook
    refit.load_state_dict(state)
    return refit


def refit_record(parent: str | os.PathLike, parent_digest: str, dest: str | os.PathLike, num_codes: int,
                 decoder_steps: int) -> dict:
    """The `refit` entry of the config.json of a refit exported at `dest` from the VQGAN weights
    `parent`: their weights digest and path (relative to `dest`), the number of codes and of decoder
    fine-tune steps."""
    return {"from_digest": parent_digest, "from_path": os.path.relpath(Path(parent).resolve(), Path(dest).resolve()),
            "num_codes": num_codes, "decoder_steps": decoder_steps}


class Parent(NamedTuple):
    path: Path
    codebook: torch.Tensor  # (K_parent, C)


def refit_parent(vqgan_path: str | os.PathLike) -> Parent | None:
    """The VQGAN that the exported VQGAN at `vqgan_path` is a refit of, checked to be the weights it
    was refit from; None when `vqgan_path` is no refit."""
    if not is_exported(vqgan_path):
        return None
    description = read_description(vqgan_path, "vqgan")
    record = description.get("refit")
    if record is None:
        return None
    path = (Path(vqgan_path) / record["from_path"]).resolve()
    if not path.exists():
        raise UserError(f"{vqgan_path} is a refit of {path}, which is not there: the parent VQGAN's codebook is needed")
    state = read_vqgan_weights(path)
    if weights_digest(state) != record["from_digest"]:
        raise UserError(f"{vqgan_path} is a refit of other weights than those now at {path} "
                        f"({record['from_digest'][:19]}... expected)")
    # (K_parent, C) in the refit's code space, which is its parent's
    return Parent(path, code_vectors(state[CODEBOOK].float(), description["config"].get("l2_codes", False)))


@torch.no_grad()
def map_vocabulary(state: dict[str, torch.Tensor], old_codebook: torch.Tensor, new_codebook: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], str]:
    """A BidirectionalTransformer's weights `state` for the tokens of `old_codebook` (K_old, C) moved
    onto those of `new_codebook` (K_new, C) in the same latent space. Each old code goes to its
    nearest new code; new code k's embedding row is the mean of the rows of the old codes that went
    to it, and its output bias the log-sum-exp of theirs (for equal rows the exact sum of their
    probabilities); a new code no old code went to takes the row and bias of the old code nearest to
    it. The mask token's row (the last) and all other weights are kept. Returns the new state and a
    line that says what was mapped."""
    k_old, k_new = len(old_codebook), len(new_codebook)
    goes_to, _ = nearest(old_codebook.float(), new_codebook.float())  # (K_old,)
    fallback, _ = nearest(new_codebook.float(), old_codebook.float())  # (K_new,)
    groups = [(goes_to == k).nonzero().flatten() for k in range(k_new)]
    groups = [g if len(g) else fallback[k:k + 1] for k, g in enumerate(groups)]
    emb, bias = state["tok_emb.weight"].float(), state["bias"].float()  # (K_old + 1, dim), (N, K_old + 1)
    if len(emb) != k_old + 1:
        raise UserError(f"the transformer has {len(emb) - 1} codes, the VQGAN it was trained on {k_old}")
    new_emb = torch.stack([emb[g].mean(0) for g in groups] + [emb[k_old]])
    new_bias = torch.stack([bias[:, g].logsumexp(1) for g in groups] + [bias[:, k_old]], 1)
    unmatched = int((torch.bincount(goes_to, minlength=k_new) == 0).sum())
    note = (f"mapped the transformer's {k_old} codes onto the {k_new} of the refit by nearest code vector "
            f"({k_new - unmatched} new codes take 1 to {max(len(g) for g in groups)} old ones; {unmatched} take none "
            "and start from their nearest old code)")
    return {**state, "tok_emb.weight": new_emb, "bias": new_bias}, note
