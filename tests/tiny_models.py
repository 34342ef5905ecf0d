"""Tiny random models saved as model dirs, for the evaluation, Colab and generation tests."""

import jax
import jax.numpy as jnp

from softvq_jax import checkpointing
from softvq_jax.config import defaults
from softvq_jax.config.validate import validate
from softvq_jax.models.factory import build_tokenizer

TOKENIZER_SIZE = 32


def tiny_tokenizer_config():
  """A 32px SoftVQ tokenizer: 1+1 blocks of width 32, 8 tokens of dim 4, 2 x 16 codes."""
  c = defaults.tokenizer_config("B", "quick")
  c.model.image_size = TOKENIZER_SIZE
  for part in (c.model.encoder, c.model.decoder):
    part.variant, part.patch_size, part.depth, part.width, part.heads = "mu", 8, 1, 32, 2
  c.model.num_latent_tokens, c.model.codebook_embed_dim = 8, 4
  c.quantizer.codebook_size, c.quantizer.num_codebooks = 16, 2
  validate(c)
  return c


def save_tiny_tokenizer(path, seed: int = 0):
  """Random tiny tokenizer -> an exported model dir at `path` (returned)."""
  c = tiny_tokenizer_config()
  model = build_tokenizer(c.model, c.quantizer)
  s = TOKENIZER_SIZE
  params = model.init(
    {"params": jax.random.key(seed), "sample": jax.random.key(seed + 1)}, jnp.zeros((1, s, s, 3))
  )["params"]
  return checkpointing.save_model(path, params, c.to_dict())


def tiny_sit(num_classes: int = 10):
  """(SiT module, params): 1 block of width 32 on the tiny tokenizer's 8 x 4 latents."""
  from softvq_jax.models.sit import SiT

  model = SiT(
    input_size=8,
    in_channels=4,
    patch_size=1,
    hidden_size=32,
    depth=1,
    num_heads=2,
    num_classes=num_classes,
  )
  x = jnp.zeros((1, 8, 4))
  params = model.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
  return model, params


def save_tiny_sit(path, tokenizer_dir):
  """A tiny random SiT model dir that records `tokenizer_dir` as its tokenizer."""
  from softvq_jax.weights.sit import generator_config

  model, params = tiny_sit()
  config = {"model": {**generator_config(model), "tokenizer": str(tokenizer_dir)}}
  return checkpointing.save_model(path, params, config)
