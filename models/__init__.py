"""The three modules every script drives: stage-1 VQGAN, stage-2 transformer, and the MaskGit wrapper."""
from models.maskgit import MaskGit
from models.schedules import GAMMA_FUNCTIONS, gamma_func, masked_counts
from models.transformer import BidirectionalTransformer, MultiHeadAttention
from models.vqgan import VQGAN, Discriminator

__all__ = ["VQGAN", "Discriminator", "BidirectionalTransformer", "MultiHeadAttention", "MaskGit",
           "GAMMA_FUNCTIONS", "gamma_func", "masked_counts"]
