"""Every command-line program reports a user's mistake in one or two lines, exit status 2.

For each program (evaluate, sample, export, reconstruct, data.cache_latents,
data.prepare_imagenet; convert for the stray-argument and missing-file cases): a stray positional
argument, an unknown flag or config key, a bad value and a missing file give exit code 2, a short
message naming the argument/key/file, and no traceback. Inputs are checked before anything heavy
is built (a missing workdir is reported without building the Inception). The programs run
in-process through their `run(argv)` (a Python start-up with jax costs seconds); two subprocess
cases prove the real exit code of `python -m`. Model dirs here are fakes: the checks read only
config.json, so a wrong kind of model is refused without loading any params.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from softvq_jax.cli import cache_latents, convert, evaluate, export, prepare_imagenet, reconstruct
from softvq_jax.cli import sample as sample_cli
from softvq_jax.evaluation import common
from softvq_jax.utils import cli
from softvq_jax.utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = {
  "evaluate": evaluate,
  "sample": sample_cli,
  "export": export,
  "reconstruct": reconstruct,
  "cache_latents": cache_latents,
  "prepare_imagenet": prepare_imagenet,
}


def _fake_model(path, config):
  """A model dir as far as the input checks can tell: config.json + params/ (no params)."""
  (path / "params").mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  return path


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
  root = tmp_path_factory.mktemp("fakes")
  tok = _fake_model(root / "tok", {"trainer": "tokenizer", "model": {}, "quantizer": {}})
  sit = _fake_model(root / "sit", {"model": {"kind": "sit", "num_classes": 10}})
  workdir = root / "sit_run"  # a SiT training workdir with one checkpoint
  (workdir / "checkpoints" / "100").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"trainer": "sit", "model": {}}))
  (root / "tars").mkdir()
  return {"tok": str(tok), "sit": str(sit), "sit_run": str(workdir), "tars": str(root / "tars")}


@pytest.fixture(autouse=True)
def _default_verbosity():
  yield
  if flags.FLAGS.is_parsed():
    flags.FLAGS.verbosity = 0  # absl's global flags outlive an in-process run


def call(program, *args, capsys):
  """(exit code, stderr) of `program.run(args)` in-process."""
  with pytest.raises(SystemExit) as e:
    program.run(list(args))
  return e.value.code, capsys.readouterr().err


def assert_user_error(code, err, *names):
  """Exit 2, at most 3 lines (warnings aside), each name mentioned, no traceback."""
  lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
  assert code == 2, err
  assert 1 <= len(lines) <= 3 and lines[-1].startswith("error: "), err
  assert "Traceback" not in err, err
  for name in names:
    assert name in err, (name, err)


# ---- one table: program x {stray, unknown, bad value, missing file} --------------------------

CASES = {
  "evaluate": {
    "stray": (["--out=o", "data.name=folder"], ["'data.name=folder'", "--config.data.name"]),
    "unknown": (["--out=o", "--num_imagse=3"], ["--num_imagse", "--num_images"]),
    "bad": (["--out=o", "--crops=many"], ["--crops"]),
    "missing": (
      ["--out=o", "--workdir={missing}/run", "--inception={missing}/w.safetensors"],
      ["{missing}/run", "{missing}/w.safetensors", "no such directory", "no such file"],
    ),
  },
  "sample": {
    "stray": (["--out=o", "stray"], ["'stray'"]),
    "unknown": (["--out=o", "--cfg_scael=2"], ["--cfg_scael", "--cfg_scale"]),
    "bad": (["--out=o", "--model={sit}", "--cfg_interval=0;0.7"], ["--cfg_interval"]),
    "missing": (["--out=o", "--model={missing}/g", "--tokenizer={missing}/t"], ["/g", "/t"]),
  },
  "export": {
    "stray": (["--workdir=w", "--out=o", "extra"], ["'extra'"]),
    "unknown": (["--workdir=w", "--out=o", "--stats=3"], ["--stats"]),
    "bad": (["--workdir=w", "--out=o", "--format=onnx"], ["--format"]),
    "missing": (["--workdir={missing}/w", "--out=o"], ["{missing}/w"]),
  },
  "reconstruct": {  # takes positionals: IN ... OUT; too few is its usage error
    "stray": (["--model={tok}", "only_one.png"], ["IN", "OUT"]),
    "unknown": (["--model={tok}", "--comapre", "a", "b"], ["--comapre", "--compare"]),
    "bad": (["--model={tok}", "--batch_size=0", "a", "b"], ["--batch_size"]),
    "missing": (
      ["--model={tok}", "{missing}/a.jpg", "{missing}/b.jpg", "out"],
      ["/a.jpg", "/b.jpg"],
    ),
  },
  "cache_latents": {
    "stray": (["--tokenizer=t", "--out=o", "x"], ["'x'"]),
    "unknown": (
      [
        "--tokenizer=t",
        "--out=o",
        f"--config={ROOT}/configs/tokenizer_b.py:quick",
        "--config.data.nmae=x",
      ],
      ["data.nmae", "data.name"],
    ),
    "bad": (["--tokenizer=t", "--out=o", "--dtype=int3"], ["--dtype"]),
    "missing": (
      ["--tokenizer={missing}/t", "--data_path={missing}/imgs", "--out=o"],
      ["/t", "/imgs"],
    ),
  },
  "prepare_imagenet": {
    "stray": (["--manual_dir=m", "imagenet2012"], ["'imagenet2012'"]),
    "unknown": (["--manual_dir=m", "--data_dri=d"], ["--data_dri", "--data_dir"]),
    "bad": (["--manual_dir=m", "--overwrite=maybe"], ["--overwrite"]),
    "missing": (["--manual_dir={tars}"], ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"]),
  },
}


@pytest.mark.parametrize("case", ["stray", "unknown", "bad", "missing"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_user_mistakes_give_one_line_and_exit_2(name, case, fakes, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # relative outputs land here (none should be written)
  fill = dict(fakes, missing=str(tmp_path / "nope"))
  args, names = CASES[name][case]
  code, err = call(PROGRAMS[name], *(a.format(**fill) for a in args), capsys=capsys)
  assert_user_error(code, err, *(n.format(**fill) for n in names))
  assert not os.path.exists(tmp_path / "o")  # nothing was started


def test_missing_inputs_are_found_before_the_inception_is_built(tmp_path, capsys, monkeypatch):
  def inception(*a, **k):
    raise AssertionError("the Inception was built before the inputs were checked")

  monkeypatch.setattr(common, "inception_params", inception)
  args = [f"--workdir={tmp_path}/run", "--inception_random_init", f"--out={tmp_path}/ev"]
  code, err = call(evaluate, *args, capsys=capsys)
  assert_user_error(code, err, f"{tmp_path}/run")


def test_wrong_kind_of_model_is_refused_in_one_line(fakes, tmp_path, capsys):
  out = f"--out={tmp_path}/o"
  code, err = call(export, f"--workdir={fakes['sit_run']}", out, capsys=capsys)
  assert_user_error(code, err, fakes["sit_run"], "generator", "tokenizer")  # was KeyError
  code, err = call(
    evaluate, f"--model={fakes['sit']}", "--inception_random_init", out, capsys=capsys
  )
  assert_user_error(code, err, fakes["sit"], "--mode=generation")
  code, err = call(sample_cli, f"--model={fakes['tok']}", out, capsys=capsys)
  assert_user_error(code, err, fakes["tok"], "not a generator")
  (tmp_path / "a.png").write_bytes(b"")  # exists: the model is what is wrong
  code, err = call(
    reconstruct, f"--model={fakes['sit']}", str(tmp_path / "a.png"), "b.png", capsys=capsys
  )
  assert_user_error(code, err, fakes["sit"], "not a tokenizer")


def test_unknown_config_key_is_one_clean_line(tmp_path, capsys):
  args = ["--config=configs/tokenizer_b.py:quick", "--config.optim.lrr=1", f"--out={tmp_path}"]
  code, err = call(evaluate, "--workdir=w", *args, capsys=capsys)
  assert_user_error(code, err)
  assert err.strip() == (
    "error: unknown config key 'optim.lrr' in --config.optim.lrr=1 (did you mean 'optim.lr'?)"
  )
  code, err = call(evaluate, "--workdir=w", "--config=configs/nope.py", "--out=o", capsys=capsys)
  assert_user_error(code, err, "configs/nope.py")
  code, err = call(evaluate, "--workdir=w", "--config=configs/tokenizer_b.py:bogus", capsys=capsys)
  assert_user_error(code, err, "bogus")


def test_deprecated_hyphen_spelling_still_works(fakes, tmp_path, capsys):
  code, err = call(
    sample_cli,
    f"--model={fakes['sit']}",
    "--cfg-interval",
    "0;1",
    f"--out={tmp_path}",
    capsys=capsys,
  )
  assert "--cfg-interval is deprecated; spell it --cfg_interval" in err
  assert_user_error(code, err, "--cfg_interval='0;1'")  # the value reached the new flag


def test_verbosity_shows_the_traceback_and_bugs_keep_theirs(tmp_path, capsys):
  code, err = call(export, f"--workdir={tmp_path}/w", "--out=o", "--verbosity=1", capsys=capsys)
  assert code == 2 and "Traceback" in err and err.strip().endswith("(no such directory)")
  flags.FLAGS.verbosity = 0

  def bug(argv):
    raise RuntimeError("a bug, not the user's mistake")

  with pytest.raises(RuntimeError, match="a bug"):
    cli.run(bug, flags.FlagValues(), ["prog"])


def test_programs_taking_positionals_get_them():
  seen = []
  with pytest.raises(SystemExit) as e:
    cli.run(seen.append, flags.FlagValues(), ["prog", "in.jpg", "out.png"], positionals=True)
  assert e.value.code == 0 and seen == [["prog", "in.jpg", "out.png"]]


def test_global_flags_programs_like_main(capsys):
  """main.py keeps its flags in absl's global FLAGS: `cli.run(main)` without `own`."""
  from ml_collections import config_flags

  if "cli_errors_cfg" not in flags.FLAGS:
    config_flags.DEFINE_config_file("cli_errors_cfg", None, "a config flag as main.py's")
  seen = []
  main = lambda argv: seen.append(flags.FLAGS.cli_errors_cfg.optim.lr)  # noqa: E731
  cfg = "--cli_errors_cfg=configs/tokenizer_b.py:quick"
  for arg, want in (
    ("--cli_errors_cfg.optim.lrr=1", "(did you mean 'optim.lr'?)"),
    ("--cli_errors_cfg.seed=x", "--cli_errors_cfg.seed=x"),
    ("data.name=folder", "--cli_errors_cfg.data.name=folder"),
  ):
    with pytest.raises(SystemExit) as e:
      cli.run(main, None, ["main", cfg, arg])
    assert_user_error(e.value.code, capsys.readouterr().err, want)
  with pytest.raises(SystemExit) as e:
    cli.run(main, None, ["main", cfg, "--cli_errors_cfg.optim.lr=0.5"])
  assert e.value.code == 0 and seen == [0.5]


def test_convert_refuses_stray_arguments_and_missing_files(tmp_path, capsys):
  out = ["--out", str(tmp_path / "out")]
  with pytest.raises(SystemExit) as e:
    convert.run(["tokenizer", "--weights", str(tmp_path / "w.safetensors"), *out, "stray"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "stray" in err and "Traceback" not in err
  assert len(err.strip().splitlines()) <= 4  # argparse: its usage line(s) and the error
  with pytest.raises(SystemExit) as e:
    convert.run(["tokenizer", "--weights", str(tmp_path / "w.safetensors"), *out])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "w.safetensors" in err and "Traceback" not in err
  assert len(err.strip().splitlines()) <= 3


def test_require_inputs_lists_every_missing_one(tmp_path):
  (tmp_path / "f").write_text("x")
  cli.require_inputs(
    [("--a", tmp_path / "f", "file"), ("--b", "", "dir"), ("--c", "gs://b/x", "dir")]
  )
  with pytest.raises(UserError) as e:
    cli.require_inputs(
      [
        ("--a", tmp_path / "f", "dir"),
        ("--b", tmp_path / "no", "file"),
        ("", tmp_path / "p", "path"),
      ]
    )
  assert str(e.value) == (
    f"missing inputs: --a={tmp_path / 'f'} (not a directory); "
    f"--b={tmp_path / 'no'} (no such file); {tmp_path / 'p'} (does not exist)"
  )


def _subprocess(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
  )


def test_real_exit_codes_of_python_m(tmp_path):
  cfg = "--config=configs/tokenizer_b.py:quick"
  p = _subprocess("softvq_jax.evaluate", cfg, "--config.batch_sise=8", "--out=o")
  assert p.returncode == 2, p.stderr
  assert p.stderr.strip() == (
    "error: unknown config key 'batch_sise' in --config.batch_sise=8 (did you mean 'batch_size'?)"
  )
  p = _subprocess("softvq_jax.reconstruct", f"--model={tmp_path}/m", "a.jpg", f"{tmp_path}/o.png")
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
  assert p.stderr.strip().splitlines()[-1].startswith("error: missing inputs:"), p.stderr
