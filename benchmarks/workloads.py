"""The project's standard workloads: img/s, step time, peak RSS, TFLOP/s and MFU of each.

  python benchmarks/workloads.py                       # all of them
  python benchmarks/workloads.py --only=tok_small,sit_s --steps=5 [--dtype=bfloat16]

  tok_small   tokenizer train step, :quick model (64 px), MSE + entropy, batch 16
  tok_b64     SoftVQ-B-64 train step at 256 px (reconstruction objective), batch --b64_batch
  full_small  :quick tokenizer, full objective (LPIPS + DINO disc + DINOv2 alignment, random-init
              frozen nets: tiny DINO trunk / teacher), 48 px, batch 8
  sit_s       SiT-S/1 train step on 64 x 32 latents, batch 16
  b64_infer   SoftVQ-B-64 encode + decode (one jit, donated input) at 256 px, batch 8

Each workload runs in its own subprocess (clean peak RSS = ru_maxrss of that process), with
synthetic inputs and random weights: compile, 2 warm-up steps, then the mean of `--steps` timed
steps. FLOPs are XLA's cost analysis of the compiled executable, per device; MFU uses
`--peak_tflops` or the device's bf16 peak (softvq_jax/training/flops.py; none on CPU). The CPU
default dtype is float32 (bf16 is emulated there). No PyTorch-reference timing is built in yet.
"""

from __future__ import annotations

import json
import pathlib
import resource
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

WORKLOADS = ("tok_small", "tok_b64", "full_small", "sit_s", "b64_infer")


def _tokenizer_config(name: str, dtype: str, b64_batch: int):
  from softvq_jax.config import defaults

  if name == "tok_b64":
    c = defaults.tokenizer_config("B", "tokens=64,res=256")
    c.batch_size = b64_batch
    c.loss.perceptual_weight = c.loss.disc.weight = c.loss.align.weight = 0.0
  else:
    c = defaults.tokenizer_config("B", "quick")
    c.loss.disc.weight = 0.0
    if name == "full_small":
      c.batch_size, c.model.image_size, c.model.num_latent_tokens = 8, 48, 4
      c.loss.random_init, c.loss.perceptual_weight, c.loss.perceptual_warmup = True, 1.0, 10
      c.loss.disc.name, c.loss.disc.weight, c.loss.disc.start = "dino", 0.2, 0
      c.loss.disc.dino_variant = "tiny"
      c.loss.align.weight, c.loss.align.teacher_variant, c.loss.align.proj_dim = 0.1, "tiny", 64
      c.loss.align.teacher_patch_size = 8
  c.model.dtype = dtype
  return c


def _train_workload(name: str, dtype: str, b64_batch: int):
  """(compiled step, args, images per step) of a train-step workload."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from softvq_jax import sharding
  from softvq_jax.config.validate import validate

  mesh = sharding.make_mesh(-1, 1)
  if name == "sit_s":
    from softvq_jax.config import defaults
    from softvq_jax.training import generator

    t, d = 64, 32
    latents = dict(num_tokens=t, dim=d, vq_mean=0.0, vq_std=1.0, tokenizer="", image_size=256)
    generator.resolve_latents = lambda config: latents  # synthetic latents, no cache
    config = defaults.generator_config("S")
    config.batch_size, config.model.dtype = 16, dtype
    task = generator.GeneratorTask(config, mesh, total_steps=1000, warmup_steps=0)
    rng = np.random.default_rng(0)
    host = {
      "latent": rng.normal(size=(16, t, d)).astype(np.float32),
      "label": rng.integers(0, 1000, 16).astype(np.int32),
    }
  else:
    from softvq_jax.training.tokenizer import TokenizerTask

    config = _tokenizer_config(name, dtype, b64_batch)
    validate(config)
    task = TokenizerTask(config, mesh, total_steps=1000, warmup_steps=10)
    s = config.model.image_size
    host = {"image": np.random.default_rng(0).uniform(-1, 1, (config.batch_size, s, s, 3))}
    host["image"] = host["image"].astype(np.float32)
  abstract = jax.eval_shape(task.init_state, jax.random.key(0))
  shardings = sharding.param_shardings(abstract, mesh, task.sharding_rules())
  state = jax.jit(task.init_state, out_shardings=shardings)(jax.random.key(0))
  batch = sharding.global_batch(host, mesh)
  frozen = jax.device_put(task.frozen_params(), sharding.replicated(mesh))
  step = jax.jit(
    task.train_step,
    in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
    out_shardings=(shardings, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )
  compiled = step.lower(state, batch, frozen).compile()
  del jnp
  return compiled, [state, batch, frozen], config.batch_size


def _run_one(name: str, steps: int, dtype: str, peak: float, b64_batch: int) -> dict:
  import jax
  import numpy as np

  from softvq_jax.training import flops as flops_lib

  t0 = time.perf_counter()
  if name == "b64_infer":
    from softvq_jax.config import defaults
    from softvq_jax.models import roundtrip
    from softvq_jax.models.factory import build_tokenizer

    c = defaults.tokenizer_config("B", "tokens=64,res=256")
    c.model.dtype = dtype
    model = build_tokenizer(c.model, c.quantizer)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 256, 256, 3)).astype(np.float32)
    init = {"params": jax.random.key(0), "sample": jax.random.key(1)}
    params = jax.jit(model.init)(init, x[:1])["params"]
    fn = roundtrip.reconstruct_fn(model)
    compiled = fn.lower(params, jax.device_put(x)).compile()

    def call():
      return compiled(params, jax.device_put(x))  # a fresh input buffer: x is donated

    images = 8
  else:
    compiled, args, images = _train_workload(name, dtype, b64_batch)

    def call():
      args[0], metrics = compiled(*args)
      return metrics

  compile_s = time.perf_counter() - t0
  for _ in range(2):
    jax.block_until_ready(call())
  t = time.perf_counter()
  for _ in range(steps):
    out = call()
  jax.block_until_ready(out)
  dt = (time.perf_counter() - t) / steps
  kind = jax.devices()[0].device_kind
  step_flops = flops_lib.compiled_flops(compiled)
  perf = flops_lib.utilisation(step_flops, 1.0 / dt, flops_lib.peak_tflops(kind, peak))
  return {
    "workload": name,
    "device": f"{kind} x{jax.device_count()}",
    "dtype": dtype,
    "img_per_s": images / dt,
    "step_ms": dt * 1e3,
    "compile_s": compile_s,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "gflop_per_step": (step_flops or 0.0) / 1e9,
    "tflops_per_device": perf.get("perf/tflops_per_device"),
    "mfu": perf.get("perf/mfu"),
  }


def _fmt(r: dict) -> str:
  mfu = f"{100 * r['mfu']:.2f}%" if r.get("mfu") is not None else "n/a"
  tf = r.get("tflops_per_device")
  return (
    f"{r['workload']:<11} {r['img_per_s']:9.2f} img/s {r['step_ms']:10.1f} ms/step "
    f"{r['peak_rss_mib']:8.0f} MiB RSS {r['gflop_per_step']:9.2f} GFLOP/step "
    f"{(tf or 0.0):7.4f} TFLOP/s/dev  MFU {mfu}  (compile {r['compile_s']:.1f}s)"
  )


def main(argv: list[str]) -> None:
  import argparse

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
  p.add_argument("--steps", type=int, default=5, help="timed steps per workload")
  p.add_argument("--dtype", default="", help="compute dtype (default: float32 on CPU, else bf16)")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="per-device peak for MFU")
  p.add_argument("--b64_batch", type=int, default=4, help="tok_b64 batch (global)")
  p.add_argument("--json", default="", help="also write the results here (one JSON per line)")
  p.add_argument("--_run", default="", help=argparse.SUPPRESS)  # the child process
  a = p.parse_args(argv)
  if a._run:
    import jax

    dtype = a.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    r = _run_one(a._run, a.steps, dtype, a.peak_tflops, a.b64_batch)
    print("RESULT " + json.dumps(r))
    return
  results = []
  for name in filter(None, a.only.split(",")):
    if name not in WORKLOADS:
      raise SystemExit(f"error: unknown workload {name!r}; choose from {WORKLOADS}")
    cmd = [sys.executable, __file__, f"--_run={name}", f"--steps={a.steps}"]
    cmd += [f"--dtype={a.dtype}", f"--peak_tflops={a.peak_tflops}", f"--b64_batch={a.b64_batch}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"{name:<11} FAILED (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
      continue
    r = json.loads(lines[-1][len("RESULT ") :])
    results.append(r)
    print(_fmt(r), flush=True)
  if a.json:
    pathlib.Path(a.json).write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
  main(sys.argv[1:])
