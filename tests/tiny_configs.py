"""The tiny VQGAN (16x16 images, 4x4 tokens, 16 codes) that the model, config and training tests share,
and a tiny MaskGit on it (its VQ_config_path: vqgan.yml beside it)."""

TINY_VQGAN = """
model_param:
  image_channels: 3
  enc_channels: [32, 32, 32]
  dec_channels: [32, 32, 32]
  latent_dim: 8
  img_resolution: 16
  latent_resolution: 4
  num_codebook_vectors: 16
  enc_res_blocks: 1
  dec_res_blocks: 1
"""

TINY_MASKGIT = """
model_param:
  VQ_Configs:
    VQ_config_path: vqgan.yml
  num_image_tokens: 16
  num_codebook_vectors: 16
  choice_temperature: 4.5
  gamma_type: cosine
  Transformer_param:
    num_image_tokens: 16
    num_codebook_vectors: 16
    dim: 32
    n_layers: 2
    hidden_dim: 64
    num_heads: 4
"""
