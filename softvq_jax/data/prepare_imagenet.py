"""Alias of `softvq_jax.cli.prepare_imagenet` (`python -m softvq_jax.data.prepare_imagenet`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("softvq_jax.cli.prepare_imagenet", run_name="__main__", alter_sys=True)
