"""Config validation: every value is checked with its key and file named, numbers in any YAML
spelling, unknown (misspelt) keys refused with the known ones listed, flags checked like values."""
import re
from pathlib import Path

import pytest
from tiny_configs import TINY_MASKGIT as TINY_MASKGIT_MODEL
from tiny_configs import TINY_VQGAN

from common import UserError
from models.config import MASKGIT_TRAIN, apply_overrides, load_maskgit_file, load_vqgan_file

TINY_MASKGIT = TINY_MASKGIT_MODEL + """train_param:
  batch_size: 4
  learning_rate: 2.0e-4
  betas: [0.9, 0.96]
"""
VQGAN_TRAIN_PARAM = """train_param:
  epochs: 3
  disc_loss: hinge
"""


def write(tmp_path: Path, maskgit: str = TINY_MASKGIT, vqgan: str = TINY_VQGAN + VQGAN_TRAIN_PARAM) -> Path:
    (tmp_path / "vqgan.yml").write_text(vqgan)
    (tmp_path / "maskgit.yml").write_text(maskgit)
    return tmp_path / "maskgit.yml"


def test_tiny_configs_load_with_defaults(tmp_path):
    config = load_maskgit_file(write(tmp_path))
    assert config.train["batch_size"] == 4 and config.train["accum_grad"] == 1
    assert config.model["Transformer_param"]["dropout"] == 0.1 and config.model["gamma_type"] == "cosine"
    assert config.model["Transformer_param"]["attention"] == "sdpa"  # a lab config has no such key: the fused core
    assert load_vqgan_file(tmp_path / "vqgan.yml").train["epochs"] == 3


@pytest.mark.parametrize("text, key, value", [
    ("learning_rate: 3e-4", "learning_rate", 3e-4),         # PyYAML reads this spelling as a string
    ("learning_rate: '1E-3'", "learning_rate", 1e-3),
    ("learning_rate: 1", "learning_rate", 1.0),
    ("batch_size: 8.0", "batch_size", 8),
    ("batch_size: 1e1", "batch_size", 10),
])
def test_numbers_in_any_yaml_spelling(tmp_path, text, key, value):
    path = write(tmp_path, re.sub(rf"  {key}: .*", f"  {text}", TINY_MASKGIT))
    loaded = load_maskgit_file(path).train[key]
    assert loaded == pytest.approx(value) and type(loaded) is type(value)


def test_empty_train_param_gets_the_defaults(tmp_path):
    path = write(tmp_path, TINY_MASKGIT.split("train_param:")[0] + "train_param:\n")
    assert load_maskgit_file(path).train == {k: spec.default for k, spec in MASKGIT_TRAIN.items()}


@pytest.mark.parametrize("old, new, message", [
    ("n_layers: 2", "n_layers: 2.5", "`n_layers` must be an integer >= 1, got 2.5"),
    ("dim: 32", "dim: -4", "`dim` must be an integer >= 1, got -4"),
    ("batch_size: 4", "batch_size: x", "`batch_size` must be an integer >= 1, got 'x'"),
    ("batch_size: 4", "batch_size: true", "`batch_size` must be an integer >= 1, got True"),
    ("batch_size: 4", "batch_size: 4\n  colour_variants: 6",
     "`colour_variants` must be an integer >= 0 and <= 5, got 6"),
    ("learning_rate: 2.0e-4", "learning_rate: fast", "`learning_rate` must be a number > 0"),
    ("learning_rate: 2.0e-4", "learning_rate: .nan", "`learning_rate` must be a number > 0"),
    ("betas: [0.9, 0.96]", "betas: [0.9]", "`betas` must be two numbers in [0, 1)"),
    ("betas: [0.9, 0.96]", "betas: [0.9, 1.0]", "`betas[1]` must be a number >= 0 and < 1"),
    ("betas: [0.9, 0.96]", "betas: 0.9", "`betas` must be two numbers"),
    ("num_heads: 4", "num_heads: 4\n    dropout: 1.5", "`dropout` must be a number >= 0 and < 1"),
    ("num_heads: 4", "num_heads: 4\n    attention: flash", "unknown `attention` 'flash'"),
    ("gamma_type: cosine", "gamma_type: 3", "unknown `gamma_type` 3"),
    ("num_heads: 4", "num_heads: 4\n    num_head: 4", "unknown key(s) `num_head`; known keys: num_image_tokens"),
    ("choice_temperature: 4.5", "choice_temp: 1", "unknown key(s) `choice_temp`"),
    ("batch_size: 4", "batch_sz: 4", "unknown key(s) `batch_sz`; known keys: epochs, batch_size"),
    ("train_param:", "trian_param:", "unknown top-level key(s) `trian_param`; known keys: model_param, train_param"),
    ("VQ_config_path: vqgan.yml", "VQ_config_path: vqgan.yml\n    VQ_ckpt: x.pt", "unknown key(s) `VQ_ckpt`"),
    (TINY_MASKGIT[TINY_MASKGIT.index("train_param:"):], "train_param: [1, 2]\n",
     "(train_param): must be a mapping of names to values, got [1, 2]"),
])
def test_bad_maskgit_value_names_key_and_file(tmp_path, old, new, message):
    path = write(tmp_path)
    assert old in TINY_MASKGIT
    path.write_text(TINY_MASKGIT.replace(old, new, 1))
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_maskgit_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("old, new, message", [
    ("latent_dim: 8", "latent_dim: 8.5", "`latent_dim` must be an integer"),
    ("enc_channels: [32, 32, 32]", "enc_channels: [32, x, 32]", "`enc_channels[1]` must be an integer"),
    ("enc_channels: [32, 32, 32]", "enc_channels: 32", "`enc_channels` must be a list"),
    ("dec_res_blocks: 1", "dec_res_blocks: 1\n  std: [0.5, 0, 0.5]", "`std[1]` must be a number > 0"),
    ("dec_res_blocks: 1", "dec_res_blocks: 1\n  beta: -1", "`beta` must be a number >= 0"),
    ("latent_dim: 8", "latent_dimension: 8", "unknown key(s) `latent_dimension`"),
    ("epochs: 3", "epochs: 0", "`epochs` must be an integer >= 1, got 0"),
    ("disc_loss: hinge", "disc_loss: wgan", "unknown `disc_loss` 'wgan'; valid: hinge, vanilla"),
    ("disc_loss: hinge", "flip: maybe", "`flip` must be true or false, got 'maybe'"),
])
def test_bad_vqgan_value_names_key_and_file(tmp_path, old, new, message):
    text = TINY_VQGAN + VQGAN_TRAIN_PARAM
    assert old in text
    write(tmp_path, vqgan=text.replace(old, new, 1))
    for load, path in ((load_vqgan_file, tmp_path / "vqgan.yml"), (load_maskgit_file, tmp_path / "maskgit.yml")):
        with pytest.raises(UserError, match=re.escape(message)) as err:
            load(path)
        assert str(tmp_path / "vqgan.yml") in str(err.value)


def test_flags_are_checked_like_config_values(tmp_path):
    train = load_maskgit_file(write(tmp_path)).train
    assert apply_overrides(train, MASKGIT_TRAIN, {"batch_size": 2, "epochs": None})["batch_size"] == 2
    with pytest.raises(UserError, match=r"command line \(flags\): `accum_grad` must be an integer >= 1, got 0"):
        apply_overrides(train, MASKGIT_TRAIN, {"accum_grad": 0})

