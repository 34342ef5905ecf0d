"""Config key help (config/keys.py): complete, not stale, and printed by `main --print_config`.

A key added to config/defaults.py without a line in config/key_help.py fails here, naming it, so
the help `--print_config` shows never lags behind the recipes.
"""

import pathlib
import re
import subprocess
import sys

import pytest

from softvq_jax.config import keys

ROOT = pathlib.Path(__file__).parents[1]
CONFIG_DIR = ROOT / "configs"
# Every argument combination that shapes a recipe's keys, per config-file family (the prefix of
# the file name); tokenizer= / tokens= / res= of the generators only set values.
ARGS = {
  "tokenizer": [None, "tokens=32", "res=512", "tokens=32,res=512", "quick", "quick,tokens=32"],
  "sit": [None, "quick", "kind=dit", "kind=dit,quick", "tokenizer=/m,tokens=32,res=512"],
}


def recipes():
  """(name, config) of every file in configs/ under every argument list of its family."""
  files = sorted(CONFIG_DIR.glob("*.py"))
  assert files, CONFIG_DIR
  for path in files:
    family = path.stem.split("_")[0]
    assert family in ARGS, f"{path.name}: a new config family; add its arguments to ARGS"
    for arg in ARGS[family]:
      spec = f"{path}:{arg}" if arg else str(path)
      yield f"{path.name}:{arg or ''}", keys.recipe_defaults(spec)


@pytest.fixture(scope="module")
def all_recipes():
  return list(recipes())


def test_every_key_of_every_recipe_has_help(all_recipes):
  missing = {}
  for name, config in all_recipes:
    for key, _ in keys.leaves(config):
      if not keys.KEY_HELP.get(key, "").strip():
        missing.setdefault(key, name)
  assert not missing, f"config keys without help (add a line to {keys.HELP_FILE}): " + ", ".join(
    f"{k} (in {n})" for k, n in sorted(missing.items())
  )


def test_no_help_for_a_key_no_recipe_has(all_recipes):
  known = {key for _, config in all_recipes for key, _ in keys.leaves(config)}
  stale = sorted(set(keys.KEY_HELP) - known)
  assert not stale, f"help for keys no recipe has (remove from {keys.HELP_FILE}): {stale}"
  assert len(known) > 100  # the recipes were really walked


def test_both_families_and_dit_are_covered(all_recipes):
  trainers = {config.trainer for _, config in all_recipes}
  assert trainers == {"tokenizer", "sit", "dit"}


def test_help_table_refuses_duplicates_and_stray_lines():
  assert keys.parse_help("# title\na.b: one\n  two\n\nc: three") == {"a.b": "one two", "c": "three"}
  with pytest.raises(ValueError, match="given twice"):
    keys.parse_help("a: x\na: y")
  with pytest.raises(ValueError, match="expected 'key: help'"):
    keys.parse_help("a = x")
  with pytest.raises(ValueError, match="continuation without a key"):
    keys.parse_help("# title\n  orphan")


@pytest.mark.parametrize("spec", ["tokenizer_bl.py:tokens=32,res=512", "sit_xl.py:kind=dit"])
def test_describe_lists_every_key_with_value_and_help(spec):
  config = keys.recipe_defaults(str(CONFIG_DIR / spec))
  lines = keys.describe(config, defaults=config).splitlines()
  for key, value in keys.leaves(config):
    want = f"{key} = {value!r}"
    hits = [ln for ln in lines if ln[2:].startswith(want + " ")]
    assert len(hits) == 1, (key, want)
    assert hits[0].startswith("  "), hits[0]  # unchanged: no marker
    assert hits[0].endswith("# " + keys.KEY_HELP[key]), hits[0]
  assert "# model" in lines and "# optim" in lines


def test_describe_marks_only_changed_and_unknown_keys():
  base = keys.recipe_defaults(str(CONFIG_DIR / "tokenizer_s.py:quick"))
  config = keys.recipe_defaults(str(CONFIG_DIR / "tokenizer_s.py:quick"))
  config.quantizer.tau = 0.5
  config.unlock()
  config.extra_key = 3
  marked = [ln for ln in keys.describe(config, defaults=base).splitlines() if ln.startswith("* ")]
  assert len(marked) == 2, marked
  tau, extra = sorted(marked, key=lambda ln: "extra_key" in ln)
  assert tau.startswith("* quantizer.tau = 0.5 ") and "# [recipe: 0.07] " in tau
  assert extra.startswith("* extra_key = 3 ") and "[not in the recipe] (no help" in extra
  assert not [ln for ln in keys.describe(config).splitlines() if ln.startswith("* ")]


def test_main_print_config_needs_no_workdir_and_marks_the_override():
  proc = subprocess.run(
    [
      sys.executable,
      "-X",
      "importtime",  # its import log on stderr shows jax is never imported
      "-m",
      "softvq_jax.main",
      "--config=configs/tokenizer_b.py:quick",
      "--print_config",
      "--config.optim.lr=0.5",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(ln for ln in proc.stdout.splitlines() if "optim.lr =" in ln)
  assert re.fullmatch(r"\* optim\.lr = 0\.5 +# \[recipe: 0\.001\] .+", line), line
  assert line.endswith(keys.KEY_HELP["optim.lr"])
  assert proc.stdout.count("\n* ") == 1, proc.stdout  # only the override is marked
  imported = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if "|" in ln}
  assert "ml_collections" in imported and "jax" not in imported
