"""The README's commands work as written: every `python -m softvq_jax...` line is parsed by the
real program (flags, config file and argument, `--config.*` overrides, validation), and the quick
start runs at tiny size. A documented command that no longer parses fails CI."""

import importlib
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from softvq_jax.config.validate import ConfigError, validate
from softvq_jax.utils import cli
from softvq_jax.weights.io import WeightFileError

ROOT = pathlib.Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
FOREIGN = re.compile(  # other libraries' INFO lines and banners
  r"(orbax|checkpoint_manager|atomicity|tensorflow|clu/|periodic_actions|"
  r"oneDNN|port\.cc|absl::InitializeLog|Setting work unit notes)"
)
PROGRESS = re.compile(r"step (\d+)/(\d+) .*\| ([0-9.e+-]+) steps/s, ([0-9.e+-]+) img/s")
PROGRAMS = {  # documented module -> the module holding its flags
  "softvq_jax.evaluate": "softvq_jax.cli.evaluate",
  "softvq_jax.sample": "softvq_jax.cli.sample",
  "softvq_jax.export": "softvq_jax.cli.export",
  "softvq_jax.reconstruct": "softvq_jax.cli.reconstruct",
  "softvq_jax.data.cache_latents": "softvq_jax.cli.cache_latents",
  "softvq_jax.data.prepare_imagenet": "softvq_jax.cli.prepare_imagenet",
}


def readme_commands() -> list[list[str]]:
  """Every `python -m softvq_jax...` command in the README's code blocks, as argv lists."""
  commands = []
  for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S):
    text = re.sub(r"\\\n\s*", " ", block)  # join continued lines
    for line in text.splitlines():
      line = re.sub(r"\s+#\s.*$", "", line).strip()  # trailing comments
      if "python -m softvq_jax" not in line or line.startswith("#"):
        continue
      line = line[line.index("python -m softvq_jax") :].split("&&")[0]
      line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # optional flags are still flags
      argv = shlex.split(line)[2:]  # drop "python -m"
      commands.append([a for a in argv if a not in ("|", "...")])
  return commands


COMMANDS = readme_commands()


def test_the_readme_documents_every_program():
  documented = {argv[0] for argv in COMMANDS}
  assert {"softvq_jax.main", "softvq_jax.convert", *PROGRAMS} <= documented, documented
  assert len(COMMANDS) >= 20


def _check_main(args: list[str]) -> None:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  flags.DEFINE_enum("distributed", "auto", ["auto", "true", "false"], "", flag_values=fv)
  flags.DEFINE_boolean("print_config", False, "", flag_values=fv)
  rest = cli.parse(fv, ["main", *args])  # config overrides are registered from sys.argv
  assert rest == ["main"], f"stray arguments {rest[1:]}"
  try:
    validate(fv.config)
  except WeightFileError:
    pass  # the documented pretrained files are the user's to supply
  except ConfigError as e:
    if "does not exist" not in str(e) and "not found" not in str(e):
      raise


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:80] for c in COMMANDS])
def test_a_readme_command_parses(argv):
  module, args = argv[0], argv[1:]
  if module == "softvq_jax.main":
    _check_main(args)
  elif module == "softvq_jax.convert":
    from softvq_jax.cli import convert

    convert.build_parser().parse_args(args)
  else:
    mod = importlib.import_module(PROGRAMS[module])
    rest = cli.parse(mod.FLAGS, [module, *args])
    positional = module == "softvq_jax.reconstruct"
    assert positional or rest == [module], f"stray arguments {rest[1:]}"
    cli.reset(mod.FLAGS)


def test_the_quick_start_runs_as_written_and_prints_what_a_person_reads(tmp_path):
  """The first training command of the Quick start at tiny size (8 steps, 32 px): it works, and
  its default output is ours: no library internals, one run summary, steady progress lines."""
  quick = next(c for c in COMMANDS if c[0] == "softvq_jax.main" and "quick" in " ".join(c))
  args = [a if not a.startswith("--workdir=") else f"--workdir={tmp_path}/quick" for a in quick[1:]]
  tiny = [
    "--config.total_steps=8",
    "--config.log_every=2",
    "--config.eval_every=8",
    "--config.image_every=8",
    "--config.model.image_size=32",
    "--config.batch_size=8",
  ]
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # main quiets TF
  proc = subprocess.run(
    [sys.executable, "-m", *quick[:1], *args, *tiny],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "quick" / "eval_summary.json").exists()
  assert (tmp_path / "quick" / "images" / "reconstruction_0000008.png").exists()
  lines = proc.stderr.splitlines()
  assert not [ln for ln in lines if FOREIGN.search(ln)], "\n".join(lines)
  progress = [PROGRESS.search(ln) for ln in lines if PROGRESS.search(ln)]
  assert [int(m.group(1)) for m in progress] == [2, 4, 6, 8], "\n".join(lines)
  rates = [float(m.group(3)) for m in progress]
  assert all(r > 0 for r in rates)
  # After the compiling window, rates are steady (no alternating ~0 / real values).
  assert max(rates[1:]) / min(rates[1:]) < 5, rates
  assert sum("trainable params" in ln for ln in lines) == 1  # the run summary, once
  assert any("eval @ 8" in ln for ln in lines)
  assert len(lines) < 25, "\n".join(lines)
