"""SiT-L/1 on SoftVQ latents (SPEC §2.2): AdamW 1e-4 constant, batch 256, EMA 0.9999.

Arguments after the colon: tokenizer=<dir> (for sample grids; default: the cache's), kind=dit
(DiT instead of SiT), tokens=L (checked against the cache), quick (a tiny SiT on a latent
cache of the bundled photos, CPU minutes).
The latents come from a cache (python -m softvq_jax.data.cache_latents):
  python -m softvq_jax.main --config=configs/sit_l.py:tokenizer=exported/softvq_b64 \
      --workdir=runs/sit_l --config.data.path=/data/caches/imagenet256_softvq_b64
  python -m softvq_jax.main --config=configs/sit_l.py:quick --workdir=runs/sit_quick \
      --config.data.path=caches/photos
"""

from softvq_jax.config.defaults import generator_config


def get_config(arg=None):
  return generator_config("L", arg)
