"""Alias of `softvq_jax.cli.convert`: keeps `python -m softvq_jax.convert` working."""

import runpy

if __name__ == "__main__":
  runpy.run_module("softvq_jax.cli.convert", run_name="__main__", alter_sys=True)
