"""Generator training on a latent cache (the shared loop), then sampling and the sample CLI.

A tiny tokenizer (random weights) and a latent cache of structured latents (class means + noise,
written with `latents.write_cache`) stand in for the real ones; a tiny SiT trains for a few steps
on 8 CPU devices. Checks: the eval loss goes down, the resolved latent settings are recorded in
the checkpoint config, sample grids are written, `load_generator` + `generate` give uint8 images
that do not depend on the batch size, and `python -m softvq_jax.sample` writes PNGs and an ADM
npz. DiT: a few steps of the diffusion loss through the same task. `latents_online`: the task
builds its own data (training/online_latents.py) and trains on the photos encoded on the fly.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
from tiny_models import TOKENIZER_SIZE, save_tiny_tokenizer

from softvq_jax import checkpointing
from softvq_jax.config import defaults
from softvq_jax.config.validate import ConfigError, validate
from softvq_jax.data import latents
from softvq_jax.sampling import generate as g
from softvq_jax.training import loop, online_latents
from softvq_jax.training.generator import GeneratorTask

S, L, D = TOKENIZER_SIZE, 8, 4  # tiny_models' tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("gen")
  tok_dir = save_tiny_tokenizer(root / "tok")
  rng = np.random.default_rng(0)
  n, classes = 64, 4
  labels = np.arange(n) % classes
  means = rng.normal(size=(classes, L, D)) * 0.05
  z = means[labels][:, None] + 0.01 * rng.normal(size=(n, 2, L, D))
  info = latents.write_cache(
    root / "cache", z.astype(np.float32) + 0.3, labels, image_size=S, tokenizer=str(tok_dir)
  )
  return root, tok_dir, info


def _config(root, kind="sit", steps=40):
  c = defaults.generator_config("S", f"quick,kind={kind}")
  c.data.path = str(root / "cache")
  c.model.num_classes = 4
  c.batch_size = 16
  c.total_steps = steps
  c.log_every = 10
  c.eval_every = max(1, steps // 4)
  c.optim.lr = 3e-3
  c.image_every = steps
  c.sampling.steps = 4
  c.eval.num_images_grid = 4
  c.ckpt.async_save = False
  c.data.num_workers = 1
  validate(c)
  return c


@pytest.fixture(scope="module")
def trained(setup):
  root, tok_dir, info = setup
  workdir = root / "sit_run"
  summary = loop.train(GeneratorTask, _config(root), str(workdir))
  return workdir, summary


def test_training_lowers_the_loss_and_records_latents(setup, trained):
  _, tok_dir, info = setup
  workdir, summary = trained
  first, last = summary["first_eval"], summary["final_eval"]
  assert last["eval/raw_loss"] < 0.9 * first["eval/raw_loss"]  # same fixed eval keys
  cfg = checkpointing.read_checkpoint_config(workdir)
  m = cfg["model"]
  assert (m["num_tokens"], m["dim"]) == (L, D)
  np.testing.assert_allclose([m["vq_mean"], m["vq_std"]], [info["vq_mean"], info["vq_std"]])
  assert pathlib.Path(m["tokenizer"]) == pathlib.Path(tok_dir)
  grids = sorted((workdir / "images").glob("samples_*.png"))
  assert grids, "no sample grid written"


def test_generate_is_batch_independent(trained):
  workdir, _ = trained
  gen = g.load_generator(workdir)
  assert gen.tokenizer is not None and gen.image_size == S
  settings = g.SamplerSettings(sampler="sde", steps=4, cfg_scale=1.5, cfg_interval=(0.0, 0.7))
  labels = np.array([0, 1, 2, 4])  # 4 = null (unconditional)
  a = g.generate_images(gen, labels, settings, batch_size=4, seed=3)
  b = g.generate_images(gen, labels, settings, batch_size=2, seed=3)
  assert a.dtype == np.uint8 and a.shape == (4, S, S, 3)
  np.testing.assert_array_equal(a, b)
  c = g.generate_images(gen, labels, settings, batch_size=4, seed=4)
  assert np.any(a != c)
  z = np.concatenate([im for im, _ in g.generate(gen, labels[:2], settings, decode=False)])
  assert z.shape == (2, L, D) and np.isfinite(z).all()
  with pytest.raises(ValueError, match="labels must be in"):
    next(g.generate(gen, [9], settings))


def test_sample_cli(trained, tmp_path):
  workdir, _ = trained
  from softvq_jax.cli.sample import main
  from softvq_jax.evaluation.adm_npz import iter_npz_batches

  out = main(
    [
      "--workdir",
      str(workdir),
      "--num",
      "3",
      "--batch",
      "2",
      "--sampler",
      "ode",
      "--steps",
      "3",
      "--cfg-scale",
      "2.0",
      "--cfg-interval",
      "0,0.7",
      "--classes",
      "1-2",
      "--out",
      str(tmp_path),
    ]
  )
  assert out.name == f"samples_3x{S}x{S}x3.npz"
  with np.load(out) as f:
    assert f["arr_0"].shape == (3, S, S, 3) and f["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(f["arr_1"], [1, 2, 1])
  assert len(list((tmp_path / "images").glob("*.png"))) == 3
  assert json.loads((tmp_path / "sampling.json").read_text())["sampler"] == "ode"
  del iter_npz_batches


def test_dit_task_trains(setup, tmp_path):
  root, _, _ = setup
  c = _config(root, kind="dit", steps=4)
  c.eval_every = c.image_every = 4
  summary = loop.train(GeneratorTask, c, str(tmp_path / "dit"))
  assert np.isfinite(summary["final_eval"]["eval/raw_loss"])
  gen = g.load_generator(tmp_path / "dit")
  assert gen.is_dit
  im = g.generate_images(
    gen, [0, 1], g.SamplerSettings(sampler="diffusion", steps=3, cfg_scale=1.5)
  )
  assert im.shape == (2, S, S, 3)


def test_online_latents_through_the_generator_task(setup, tmp_path):
  root, tok_dir, _ = setup
  c = _config(root, steps=2)
  c.data.name, c.data.tokenizer, c.data.image_source = "latents_online", str(tok_dir), "photos"
  c.data.path = c.data.eval_path = ""  # the cache paths are not read by latents_online (refused)
  c.model.num_classes = 10  # photo labels are the image index (0..8)
  c.eval_every = c.image_every = 2
  validate(c)
  train, ev = GeneratorTask.build_data(c)  # data/ alone refuses latents_online
  assert isinstance(train, online_latents.OnlineLatentTrainData) and train.num_examples == 9
  assert isinstance(ev, online_latents.OnlineLatentEvalData) and ev.num_examples == 2
  b = train.batch(0)
  assert b["latent"].shape == (16, L, D) and b["latent"].dtype == np.float32
  summary = loop.train(GeneratorTask, c, str(tmp_path / "online"))
  assert np.isfinite(summary["final_eval"]["eval/raw_loss"])
  m = checkpointing.read_checkpoint_config(tmp_path / "online")["model"]
  assert (m["num_tokens"], m["dim"]) == (L, D)
  assert pathlib.Path(m["tokenizer"]) == pathlib.Path(tok_dir)


def test_config_validation(setup):
  root, _, _ = setup
  c = _config(root)
  c.transport.prediction = "noise"
  with pytest.raises(ConfigError, match="prediction"):
    validate(c)
  c = _config(root)
  c.data.path = ""
  with pytest.raises(ConfigError, match="data.path"):
    validate(c)


@pytest.mark.parametrize("variant", ["s", "b", "l", "xl"])
@pytest.mark.parametrize("arg", [None, "kind=dit", "quick"])
def test_generator_configs_build_and_validate(variant, arg):
  import importlib.util

  path = pathlib.Path(__file__).parents[1] / "configs" / f"sit_{variant}.py"
  spec = importlib.util.spec_from_file_location(f"sit_{variant}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.data.path = "/some/cache"
  validate(c)
  assert c.trainer == ("dit" if arg == "kind=dit" else "sit")
  if arg != "quick":
    assert c.model.variant == variant.upper() and c.batch_size == 256
    assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.weight_decay) == (1e-4, 0.9, 0.999, 0.0)
    assert c.optim.schedule == "constant" and c.optim.ema_decay == 0.9999
    assert c.model.class_dropout_prob == 0.1
    assert c.optim.grad_clip == (0.0 if arg == "kind=dit" else 1.0)


def test_converted_generator_samples_with_its_tokenizer(setup, tmp_path):
  """A model dir from `convert sit` + a tokenizer dir -> images; a mismatched tokenizer errors."""
  _, tok_dir, _ = setup
  from softvq_jax.cli.convert import main as convert_main
  from softvq_jax.models.sit import build_generator
  from softvq_jax.weights.io import save_safetensors
  from softvq_jax.weights.sit import sit_to_reference

  model = build_generator("sit", "mu", input_size=L, in_channels=D, num_classes=1000)
  x = np.zeros((1, L, D), np.float32)
  params = jax.jit(lambda: model.init(jax.random.key(0), x, np.zeros(1), np.zeros(1, int)))()
  save_safetensors(sit_to_reference(params["params"], model), tmp_path / "model.safetensors")
  ref_cfg = dict(in_channels=D, input_size=L, depth=2, hidden_size=64, num_heads=4, vae_1d=True)
  (tmp_path / "config.json").write_text(json.dumps(ref_cfg))
  out = convert_main(
    [
      "sit",
      "--config",
      str(tmp_path / "config.json"),
      "--weights",
      str(tmp_path / "model.safetensors"),
      "--out",
      str(tmp_path / "sit"),
    ]
  )
  gen = g.load_generator(out, tokenizer=tok_dir)
  assert (gen.vq_mean, gen.vq_std) == (gen.tokenizer.vq_mean, gen.tokenizer.vq_std)
  settings = g.SamplerSettings(sampler="ode", steps=2, cfg_scale=1.75)
  im = g.generate_images(gen, [3, 999], settings)
  assert im.shape == (2, S, S, 3) and im.dtype == np.uint8
  bad = dict(ref_cfg, input_size=2 * L)
  model2 = build_generator("sit", "mu", input_size=2 * L, in_channels=D, num_classes=1000)
  p2 = jax.jit(
    lambda: model2.init(jax.random.key(0), np.zeros((1, 2 * L, D)), np.zeros(1), np.zeros(1, int))
  )()
  save_safetensors(sit_to_reference(p2["params"], model2), tmp_path / "m2.safetensors")
  (tmp_path / "c2.json").write_text(json.dumps(bad))
  out2 = convert_main(
    [
      "sit",
      "--config",
      str(tmp_path / "c2.json"),
      "--weights",
      str(tmp_path / "m2.safetensors"),
      "--out",
      str(tmp_path / "sit2"),
    ]
  )
  with pytest.raises(ValueError, match="wrong --tokenizer"):
    g.load_generator(out2, tokenizer=tok_dir)
