"""The project's standard workloads: img/s, step time, peak RSS, TFLOP/s and MFU of each, and
the same workloads of the authors' PyTorch code side by side.

  python benchmarks/workloads.py                       # all of them, this project only
  python benchmarks/workloads.py --only=tok_small,sit_s --steps=5 [--dtype=bfloat16]
  python benchmarks/workloads.py --reference_repo=/path/to/continuous_tokenizer \
      --reference_python=/path/to/venv-with-torch-and-timm/bin/python [--pairs=3]

  tok_small   tokenizer train step: ViT width 256, 4 + 4 blocks, patch 16, 128 px, 32 tokens,
              batch 8; MSE + entropy (the B-64 recipe's quantizer and optimizer)
  tok_b64     SoftVQ-B-64 train step at 256 px (MSE + entropy), batch --b64_batch
  full_small  tok_small + LPIPS-VGG16 + the DINO ViT-S/16 discriminator (DiffAug, LeCam, CR) from
              step 0: the G and the D step (random-init frozen nets)
  sit_s       SiT-S/1 train step on 64 x 32 latents, batch 16
  b64_infer   SoftVQ-B-64 encode + decode (one jit, donated input) at 256 px, batch 8

Each workload runs in its own subprocess (clean peak RSS = ru_maxrss of that process), with
synthetic inputs and random weights: compile, 2 warm-up steps, then the mean of `--steps` timed
steps. FLOPs are XLA's cost analysis of the compiled executable, per device; MFU uses
`--peak_tflops` or the device's bf16 peak (softvq_jax/training/flops.py; none on CPU). The CPU
default dtype is float32 (bf16 is emulated there).

With --reference_repo/--reference_python, every workload's config is written as JSON and
benchmarks/reference_side.py builds the same models and terms from it in the reference code
(fp32, --threads torch threads); ours and the reference run as separate processes, interleaved
A/B then B/A for --pairs pairs, and the speed-up (ours / reference img/s) is printed as
min-median-max with both peak RSS figures. The reference's VQLoss runs LPIPS and a discriminator
forward (and its loop a D step) even when their weights are 0; by default those are replaced by
zero stubs so both sides compute the same terms, --reference_as_is times the reference as written.
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


def _small_model(c) -> None:
  """The issue's small tokenizer: ViT width 256, 4 + 4 blocks, patch 16, 128 px, 32 tokens."""
  c.model.image_size, c.model.num_latent_tokens, c.model.codebook_embed_dim = 128, 32, 32
  for part in (c.model.encoder, c.model.decoder):
    part.variant, part.patch_size, part.depth, part.width, part.heads = "mu", 16, 4, 256, 4
  c.batch_size = 8


def _tokenizer_config(name: str, dtype: str, b64_batch: int):
  """The ConfigDict of a tokenizer workload (the reference side maps the same dict)."""
  from softvq_jax.config import defaults

  c = defaults.tokenizer_config("B", "tokens=64,res=256")
  c.loss.perceptual_weight = c.loss.disc.weight = c.loss.align.weight = 0.0
  if name == "tok_b64":
    c.batch_size = b64_batch
  else:
    _small_model(c)
    if name == "full_small":  # + LPIPS-VGG16 and the DINO ViT-S/16 discriminator (G and D)
      c.loss.random_init, c.loss.perceptual_weight, c.loss.perceptual_warmup = True, 1.0, 0
      c.loss.disc.name, c.loss.disc.weight, c.loss.disc.start = "dino", 0.2, 0
  c.model.dtype = dtype
  return c


def _generator_config(dtype: str):
  """sit_s: SiT-S/1 on synthetic 64 x 32 latents, batch 16 (the latent size is in the config, so
  the reference side reads it too)."""
  from softvq_jax.config import defaults

  c = defaults.generator_config("S")
  c.batch_size, c.model.dtype, c.model.num_tokens, c.model.dim = 16, dtype, 64, 32
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
    from softvq_jax.training import generator

    config = _generator_config(dtype)
    b, t, d = config.batch_size, config.model.num_tokens, config.model.dim
    latents = dict(num_tokens=t, dim=d, vq_mean=0.0, vq_std=1.0, tokenizer="", image_size=256)
    generator.resolve_latents = lambda config: latents  # synthetic latents, no cache
    task = generator.GeneratorTask(config, mesh, total_steps=1000, warmup_steps=0)
    rng = np.random.default_rng(0)
    host = {
      "latent": rng.normal(size=(b, t, d)).astype(np.float32),
      "label": rng.integers(0, 1000, b).astype(np.int32),
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
    from softvq_jax.models import roundtrip
    from softvq_jax.models.factory import build_tokenizer

    c = _tokenizer_config("tok_b64", dtype, b64_batch)  # the B-64 model, as the JSON says
    model = build_tokenizer(c.model, c.quantizer)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 256, 256, 3)).astype(np.float32)
    init = {"params": jax.random.key(0), "sample": jax.random.key(1)}
    # Weights as a checkpoint load gives them (leaf by leaf from the host), not through an
    # init program: the workload is inference, and XLA's init temporaries would set the peak.
    abstract = jax.eval_shape(model.init, init, x[:1])["params"]
    rng = np.random.default_rng(0)
    host = lambda a: (0.02 * rng.standard_normal(a.shape, np.float32)).astype(a.dtype)
    params = jax.tree.map(lambda a: jax.device_put(host(a)), abstract)
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


def _child(cmd: list[str], name: str) -> dict | None:
  """One workload process; its RESULT line as a dict (None, the error shown, if it failed)."""
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode or not lines:
    print(f"{name:<11} FAILED (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}", flush=True)
    return None
  return json.loads(lines[-1][len("RESULT ") :])


def _reference_cmd(a, name: str, config_json: str) -> list[str]:
  """The reference-side command (benchmarks/reference_side.py under the torch interpreter)."""
  script = pathlib.Path(__file__).with_name("reference_side.py")
  return [
    a.reference_python,
    str(script),
    f"--reference_repo={a.reference_repo}",
    f"--workload={name}",
    f"--config_json={config_json}",
    f"--steps={a.steps}",
    f"--threads={a.threads}",
  ] + (["--as_is"] if a.reference_as_is else [])


def _config_json(name: str, a, directory: pathlib.Path) -> str:
  """This workload's config as JSON, for the reference side to map (same sizes and terms)."""
  if name == "sit_s":
    c = _generator_config("float32")
  else:
    c = _tokenizer_config("tok_b64" if name == "b64_infer" else name, "float32", a.b64_batch)
  path = directory / f"{name}.json"
  path.write_text(json.dumps(c.to_dict(), default=str))
  return str(path)


def _spread(xs: list[float]) -> str:
  xs = sorted(xs)
  return f"{xs[0]:.2f}-{xs[len(xs) // 2]:.2f}-{xs[-1]:.2f}x"


def _compare(name: str, pairs: list[tuple[dict, dict]]) -> dict:
  """Speed-up (ours / reference img/s per pair) and peak RSS of one workload's interleaved pairs."""
  speed = [o["img_per_s"] / r["img_per_s"] for o, r in pairs]
  med = lambda xs: sorted(xs)[len(xs) // 2]
  ours_rss, ref_rss = (
    med([o["peak_rss_mib"] for o, _ in pairs]),
    med([r["peak_rss_mib"] for _, r in pairs]),
  )
  print(
    f"{name:<11} speed-up {_spread(speed)} (min-median-max of {len(pairs)} pairs)  "
    f"img/s {med([o['img_per_s'] for o, _ in pairs]):.2f} vs "
    f"{med([r['img_per_s'] for _, r in pairs]):.2f}  "
    f"peak RSS {ours_rss:.0f} vs {ref_rss:.0f} MiB",
    flush=True,
  )
  return {"workload": name, "speedup": speed, "ours_rss_mib": ours_rss, "ref_rss_mib": ref_rss}


def main(argv: list[str]) -> None:
  import argparse
  import tempfile

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
  p.add_argument("--steps", type=int, default=5, help="timed steps per workload")
  p.add_argument("--dtype", default="", help="compute dtype (default: float32 on CPU, else bf16)")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="per-device peak for MFU")
  p.add_argument("--b64_batch", type=int, default=4, help="tok_b64 batch (global)")
  p.add_argument("--json", default="", help="also write the results here (one JSON per line)")
  p.add_argument("--reference_repo", default="", help="a checkout of Hhhhhhao/continuous_tokenizer")
  p.add_argument("--reference_python", default="", help="interpreter with torch + timm (reference)")
  p.add_argument("--pairs", type=int, default=3, help="interleaved ours/reference pairs")
  p.add_argument("--threads", type=int, default=2, help="torch threads of the reference side")
  p.add_argument(
    "--reference_as_is",
    action="store_true",
    help="the reference runs its weight-0 LPIPS / discriminator (as its code does)",
  )
  p.add_argument("--_run", default="", help=argparse.SUPPRESS)  # the child process
  a = p.parse_args(argv)
  if a._run:
    import jax

    dtype = a.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    r = _run_one(a._run, a.steps, dtype, a.peak_tflops, a.b64_batch)
    print("RESULT " + json.dumps(r))
    return
  names = list(filter(None, a.only.split(",")))
  for name in names:
    if name not in WORKLOADS:
      raise SystemExit(f"error: unknown workload {name!r}; choose from {WORKLOADS}")
  if bool(a.reference_repo) != bool(a.reference_python):
    raise SystemExit("error: --reference_repo and --reference_python go together")
  results, tmpdir = [], tempfile.TemporaryDirectory(prefix="workloads_")
  tmp = pathlib.Path(tmpdir.name)
  for name in names:
    ours = [sys.executable, __file__, f"--_run={name}", f"--steps={a.steps}"]
    ours += [f"--dtype={a.dtype}", f"--peak_tflops={a.peak_tflops}", f"--b64_batch={a.b64_batch}"]
    if not a.reference_repo:
      r = _child(ours, name)
      if r:
        results.append(r)
        print(_fmt(r), flush=True)
      continue
    ref, pairs = _reference_cmd(a, name, _config_json(name, a, tmp)), []
    for i in range(a.pairs):  # A/B, then B/A: neither side always runs first
      order = (ours, ref) if i % 2 == 0 else (ref, ours)
      got = {id(c): _child(c, name) for c in order}
      o, r = got[id(ours)], got[id(ref)]
      if o is None or r is None:
        break
      print("  " + _fmt(o), flush=True)
      print(
        f"  {'reference':<11} {r['img_per_s']:9.2f} img/s {r['step_ms']:10.1f} ms/step "
        f"{r['peak_rss_mib']:8.0f} MiB RSS  (torch {r.get('torch', '?')})",
        flush=True,
      )
      pairs.append((o, r))
    if pairs:
      results.append(
        {**_compare(name, pairs), "ours": [o for o, _ in pairs], "reference": [r for _, r in pairs]}
      )
  if a.json:
    pathlib.Path(a.json).write_text("".join(json.dumps(r) + "\n" for r in results))
  tmpdir.cleanup()


if __name__ == "__main__":
  main(sys.argv[1:])
