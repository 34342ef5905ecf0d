"""Command-line programs: evaluate, sample, export, convert, cache_latents, prepare_imagenet.

Each is `python -m softvq_jax.cli.<name>`; the older paths (`python -m softvq_jax.evaluate`,
`softvq_jax.data.cache_latents`, ...) are thin aliases. Training is `python -m softvq_jax.main`.
"""
