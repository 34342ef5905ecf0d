"""softvq_jax: SoftVQ-VAE 1-D continuous tokenizers and SiT/DiT generators in JAX/Flax."""

__version__ = "0.1.0"
