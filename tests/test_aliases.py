"""The documented older entry points still work after the restructuring (thin aliases)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# old `python -m` path -> the module it runs
ALIASES = {
  "softvq_jax.evaluate": "softvq_jax.cli.evaluate",
  "softvq_jax.sample": "softvq_jax.cli.sample",
  "softvq_jax.export": "softvq_jax.cli.export",
  "softvq_jax.convert": "softvq_jax.cli.convert",
  "softvq_jax.reconstruct": "softvq_jax.cli.reconstruct",
  "softvq_jax.data.cache_latents": "softvq_jax.cli.cache_latents",
  "softvq_jax.data.prepare_imagenet": "softvq_jax.cli.prepare_imagenet",
}


def _file(module: str) -> pathlib.Path:
  p = ROOT.joinpath(*module.split("."))
  return p / "__main__.py" if p.is_dir() else p.with_suffix(".py")


@pytest.mark.parametrize("alias, target", sorted(ALIASES.items()))
def test_alias_runs_its_target_as_main(alias, target):
  tree = ast.parse(_file(alias).read_text())
  calls = [
    n
    for n in ast.walk(tree)
    if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "run_module"
  ]
  assert [c.args[0].value for c in calls] == [target]
  assert calls[0].keywords and {k.arg: k.value.value for k in calls[0].keywords}["run_name"] == (
    "__main__"
  )
  assert 'if __name__ == "__main__":' in _file(target).read_text()


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
    [sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
  )


def test_convert_alias_end_to_end():
  out = _run("softvq_jax.convert", "--help")
  assert out.returncode == 0, out.stderr
  for sub in ("tokenizer", "tokenizer-to-reference", "sit"):
    assert sub in out.stdout


def test_absl_alias_parses_its_own_flags():
  out = _run("softvq_jax.export", "--out=/nonexistent")  # --workdir missing: a usage error
  assert out.returncode == 2
  assert out.stderr.strip() == "error: missing required flag --workdir"


def test_python_api_aliases():
  from softvq_jax import inference, weights
  from softvq_jax.convert import sit_from_reference, tokenizer_from_reference
  from softvq_jax.weights import pretrained

  assert inference.load_tokenizer is pretrained.load_tokenizer
  from softvq_jax.cli import reconstruct as command
  from softvq_jax.reconstruct import reconstruct

  assert reconstruct is command.reconstruct  # the one-liner through the alias
  assert tokenizer_from_reference is weights.tokenizer_from_reference
  assert sit_from_reference.__module__ == "softvq_jax.weights.sit"
