"""The tiny VQGAN (16x16 images, 4x4 tokens, 16 codes) that the model and training tests share."""

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
