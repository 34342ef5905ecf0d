"""Alias of `softvq_jax.weights.pretrained` (the documented `from softvq_jax.inference import
load_tokenizer`)."""

from softvq_jax.weights.pretrained import PretrainedTokenizer, latent_statistics, load_tokenizer

__all__ = ["PretrainedTokenizer", "latent_statistics", "load_tokenizer"]
