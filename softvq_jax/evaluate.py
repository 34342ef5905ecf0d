"""Alias of `softvq_jax.cli.evaluate`: keeps `python -m softvq_jax.evaluate` working."""

import runpy

if __name__ == "__main__":
  runpy.run_module("softvq_jax.cli.evaluate", run_name="__main__", alter_sys=True)
