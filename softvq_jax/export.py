"""Alias of `softvq_jax.cli.export`: keeps `python -m softvq_jax.export` working."""

import runpy

if __name__ == "__main__":
  runpy.run_module("softvq_jax.cli.export", run_name="__main__", alter_sys=True)
