"""The tokenizer trainer: sharded steps (1 vs 8 devices), end-to-end loop, resume, fail-fast."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np

from softvq_jax import checkpointing, data, sharding
from softvq_jax.config import defaults
from softvq_jax.config.validate import validate
from softvq_jax.data import preprocess
from softvq_jax.training import loop
from softvq_jax.training.tokenizer import TokenizerTask

ROOT = pathlib.Path(__file__).parents[1]


def tiny_config(**overrides):
  c = defaults.tokenizer_config("B", "quick")
  c.model.image_size = 32
  for part in (c.model.encoder, c.model.decoder):
    part.variant, part.patch_size, part.depth, part.width, part.heads = "mu", 8, 1, 32, 2
  c.model.num_latent_tokens, c.model.codebook_embed_dim = 8, 4
  c.quantizer.codebook_size, c.quantizer.num_codebooks = 16, 2
  c.batch_size, c.total_steps = 8, 4
  c.optim.warmup_steps = 2
  c.log_every = c.eval_every = c.image_every = 2
  c.ckpt.save_every, c.ckpt.async_save = 2, False
  c.eval.batch_size, c.data.eval_crops = 4, 1
  c.loss.disc.weight = 0.0  # plain MSE + entropy unless a test turns the GAN on
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  validate(c)
  return c


def _batches(config, n):
  d = data.build_train_data(
    config.data,
    image_size=config.model.image_size,
    global_batch=config.batch_size,
    seed=config.seed,
    process_index=0,
    process_count=1,
  )
  it = d.iterator(0)
  out = [next(it) for _ in range(n)]
  if hasattr(it, "close"):
    it.close()
  return out


def _run_steps(config, devices, batches):
  mesh = sharding.make_mesh(devices=devices)
  task = TokenizerTask(config, mesh, total_steps=10, warmup_steps=2)
  abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
  shardings = sharding.param_shardings(abstract, mesh, min_fsdp_size=1)
  state = jax.jit(task.init_state, out_shardings=shardings)(jax.random.PRNGKey(0))
  step = jax.jit(task.train_step, out_shardings=(shardings, sharding.replicated(mesh)))
  losses = []
  for b in batches:
    state, metrics = step(state, sharding.global_batch(preprocess.float_images(b), mesh))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


def test_one_and_eight_devices_give_the_same_steps():
  """3 steps on 1 device == on a (data=4, fsdp=2) mesh of 8 devices."""
  config = tiny_config()
  batches = _batches(config, 3)
  losses1, params1 = _run_steps(config, jax.devices()[:1], batches)
  losses8, params8 = _run_steps(tiny_config(**{"mesh.fsdp": 2}), jax.devices(), batches)
  np.testing.assert_allclose(losses1, losses8, rtol=2e-5)
  assert losses1[-1] != losses1[0]
  # Params: Adam's first steps are ~lr * sign(grad), so a gradient entry that is ~0 can flip sign
  # under a different reduction order; compare the whole parameter vector instead of entries.
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  diff = np.linalg.norm(flat(params1) - flat(params8)) / np.linalg.norm(flat(params1))
  assert diff < 1e-3, diff


def test_gradient_accumulation_matches_full_batch():
  batches = _batches(tiny_config(), 1)
  full, _ = _run_steps(tiny_config(), jax.devices()[:1], batches)
  accum, _ = _run_steps(tiny_config(**{"optim.grad_accum_steps": 2}), jax.devices()[:1], batches)
  np.testing.assert_allclose(full, accum, rtol=1e-3)


def _params_of(workdir, config):
  mngr = checkpointing.CheckpointManager(workdir, async_save=False)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  task = TokenizerTask(config, mesh, total_steps=config.total_steps, warmup_steps=2)
  abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
  sh = sharding.param_shardings(abstract, mesh)
  state, _ = mngr.restore(checkpointing.abstract_like(abstract, sh))
  mngr.close()
  return int(state.step), jax.device_get(state.params)


def test_loop_writes_outputs_and_resumes_exactly(tmp_path):
  straight = tmp_path / "straight"
  summary = loop.train(TokenizerTask, tiny_config(total_steps=6), str(straight))
  assert summary["final_eval"]["step"] == 6
  assert {"eval/ema_psnr", "eval/ema_ssim", "eval/ema_mse"} <= set(summary["final_eval"])
  assert (straight / "eval_summary.json").exists() and (straight / "checkpoints").is_dir()
  assert (
    sorted(p.name for p in (straight / "images").glob("*.png"))[-1] == "reconstruction_0000006.png"
  )
  assert list(straight.glob("events.out.tfevents.*"))

  # Interrupted run: stopped after 4 of 6 steps, then the same command continues from step 4.
  resumed = tmp_path / "resumed"
  loop.train(TokenizerTask, tiny_config(total_steps=6, stop_after=4), str(resumed))
  assert checkpointing.CheckpointManager(resumed).latest_step() == 4
  loop.train(TokenizerTask, tiny_config(total_steps=6), str(resumed))
  steps = [json.loads(line)["step"] for line in (resumed / "eval_history.jsonl").open()]
  assert steps == [2, 4, 6]  # no step was trained twice
  step_a, params_a = _params_of(straight, tiny_config(total_steps=6))
  step_b, params_b = _params_of(resumed, tiny_config(total_steps=6))
  assert step_a == step_b == 6
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_full_recipe_without_weights_fails_fast(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "softvq_jax.main",
      "--config=configs/tokenizer_b.py",
      f"--workdir={tmp_path}/run",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  # The first missing input is named (LPIPS weights: no file is configured by default).
  assert "loss.lpips_lin_path" in (proc.stderr + proc.stdout)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_gan_steps_match_across_devices_and_respect_disc_start():
  """PatchGAN + hinge + LeCam + CR + DiffAugment + adaptive weight, 1 vs 8 devices."""
  config = tiny_config(
    **{
      "loss.disc.weight": 0.2,
      "loss.disc.name": "patchgan",
      "loss.disc.start": 3,
      "loss.disc.adaptive_weight": True,
    }
  )
  batches = _batches(config, 3)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  task = TokenizerTask(config, mesh, total_steps=10, warmup_steps=2)
  state = jax.jit(task.init_state)(jax.random.PRNGKey(0))
  step = jax.jit(task.train_step)
  disc0 = jax.device_get(state.extra["disc"])
  losses = []
  for i, b in enumerate(batches):
    state, metrics = step(state, preprocess.float_images(b))
    losses.append(float(metrics["loss"]))
    disc = jax.device_get(state.extra["disc"])
    same = [
      np.array_equal(a, c)
      for a, c in zip(
        jax.tree.leaves(disc0["params"]), jax.tree.leaves(disc["params"]), strict=True
      )
    ]
    if i + 1 < 3:  # before disc_start: D weights untouched, G weight 0
      assert all(same) and float(metrics["gan/g_weight"]) == 0.0
    else:
      assert not all(same) and float(metrics["gan/g_weight"]) > 0.0
    assert float(disc["lecam"]["real"]) != 0.0  # LeCam EMA updates from step 1
    assert np.isfinite(losses[-1]) and np.isfinite(float(metrics["gan/d_total"]))
  losses8, _ = _run_steps(config, jax.devices(), batches)
  np.testing.assert_allclose(losses, losses8, rtol=2e-5)


def test_post_init_loads_dinov2_into_the_encoder(tmp_path):
  from test_dinov2_init import DEPTH, W, dinov2_state_dict

  from softvq_jax.weights.io import save_safetensors

  path = tmp_path / "dinov2.safetensors"
  save_safetensors(dinov2_state_dict(37), path)  # 518 px / patch 14 grid, as published
  config = tiny_config(
    **{"model.encoder.width": W, "model.encoder.depth": DEPTH, "model.encoder_init": str(path)}
  )
  task = TokenizerTask(config, sharding.make_mesh(), 10, 1)
  fresh = jax.jit(task.init_state)(jax.random.PRNGKey(0))
  state = task.post_init(fresh)
  enc = jax.device_get(state.params["encoder"])
  np.testing.assert_array_equal(enc["cls_token"], dinov2_state_dict(37)["cls_token"])
  assert enc["patch_embed"]["proj"]["kernel"].shape == (8, 8, 3, W)  # resampled 14 -> 8
  np.testing.assert_array_equal(
    jax.device_get(state.ema_params["encoder"]["cls_token"]), enc["cls_token"]
  )
  np.testing.assert_array_equal(
    jax.device_get(state.params["decoder"]["mask_token"]),
    jax.device_get(fresh.params["decoder"]["mask_token"]),
  )


def test_export_and_load_a_trained_tokenizer(tmp_path):
  from softvq_jax.cli import export
  from softvq_jax.weights import pretrained
  from softvq_jax.weights.io import load_state_dict

  workdir = tmp_path / "run"
  loop.train(TokenizerTask, tiny_config(total_steps=2), str(workdir))
  out = export.export(workdir, tmp_path / "model", stats_images=8)
  tok = pretrained.load_tokenizer(out)
  assert tok.vq_std > 0 and tok.vq_mean != 0.0  # measured, not the defaults
  from_workdir = pretrained.load_tokenizer(workdir)
  x = np.zeros((2, 32, 32, 3), np.float32)
  z, info = tok.encode(x)
  assert z.shape == (2, 8, 4) and info["indices"].shape == (2, 8)
  np.testing.assert_allclose(
    tok.decode(z), from_workdir.decode(from_workdir.encode(x)[0]), atol=1e-6
  )
  np.testing.assert_allclose(tok.denormalize(tok.normalize(z)), z, atol=1e-6)
  ref = export.export(
    workdir, tmp_path / "ref" / "model.safetensors", stats_images=0, fmt="reference"
  )
  sd = load_state_dict(ref)
  assert sd["quantize.embedding"].shape == (2, 16, 4) and (ref.parent / "config.json").exists()
