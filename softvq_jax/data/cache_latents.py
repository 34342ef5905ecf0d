"""Alias of `softvq_jax.cli.cache_latents` (`python -m softvq_jax.data.cache_latents` works)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("softvq_jax.cli.cache_latents", run_name="__main__", alter_sys=True)
