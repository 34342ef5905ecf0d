"""softvq_jax: SoftVQ-VAE 1-D continuous tokenizers and SiT/DiT generators in JAX/Flax.

Layers, each importing only from those before it (README "How the code is organised"):
utils (sharding, checkpointing) < models < weights < objectives < sampling < data < evaluation <
training < config < cli (main, colab).
"""

__version__ = "0.1.0"
