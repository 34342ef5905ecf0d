"""Alias of `softvq_jax.cli.sample`: keeps `python -m softvq_jax.sample` working."""

import runpy

if __name__ == "__main__":
  runpy.run_module("softvq_jax.cli.sample", run_name="__main__", alter_sys=True)
