"""Class-conditional image generation: noise -> sampler with CFG -> de-normalise -> decode -> uint8.

    gen = load_generator("runs/sit_xl", tokenizer="exported/softvq_b64")   # or a converted dir
    settings = SamplerSettings(sampler="sde", steps=250, cfg_scale=1.75, cfg_interval=(0, 0.7))
    for images, labels in generate(gen, balanced_labels(50_000, 1000), settings, batch_size=256):
        ...  # uint8 (b, S, S, 3) NHWC, streamed batch by batch

The whole pipeline for one batch is one jitted function, the batch split over this process's
devices (padded to a multiple of their count). Sample i uses the per-sample key
`fold_in(key(seed), i)` (initial noise and every SDE / diffusion step), so a sample does not
depend on the batch size or the device count. Float32 sampler state (see `ode.py`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from softvq_jax.models.sit import SiT
from softvq_jax.objectives.diffusion import GaussianDiffusion
from softvq_jax.sampling.diffusion import diffusion_sample
from softvq_jax.sampling.ode import ode_sample
from softvq_jax.sampling.sde import sde_sample
from softvq_jax.utils.images import to_uint8
from softvq_jax.utils.paths import expand_path

SAMPLERS = ("ode", "sde", "diffusion")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """How to sample. SiT: sampler "ode" (Euler, or Heun with heun=True) or "sde" (Euler–Maruyama,
  the published setting: 250 steps, cfg 1.75, interval (0, 0.7)); DiT: "diffusion" (ancestral,
  `steps` respaced steps of the 1000-step `noise_schedule`). `path` only affects the SDE's score.
  """

  sampler: str = "sde"
  steps: int = 250
  heun: bool = False
  cfg_scale: float = 1.75
  cfg_interval: tuple[float, float] = (0.0, 0.7)
  path: str = "linear"
  t_last: float = 0.04
  noise_schedule: str = "cosine"

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampler={self.sampler!r}; choose one of {SAMPLERS}")
    lo, hi = self.cfg_interval
    if not 0 <= lo <= hi <= 1:
      raise ValueError(f"cfg_interval={self.cfg_interval} must satisfy 0 <= low <= high <= 1")
    if self.cfg_scale < 1:
      raise ValueError(f"cfg_scale={self.cfg_scale} must be >= 1 (1 disables guidance)")


@dataclasses.dataclass
class Generator:
  """A generator with its params, the frozen tokenizer (a `PretrainedTokenizer`, or None for
  latents only) and the latent normalisation `z = (z_q - vq_mean) / vq_std`."""

  model: SiT
  params: Any
  tokenizer: Any
  vq_mean: float
  vq_std: float
  _pipelines: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def is_dit(self) -> bool:
    return self.model.learn_sigma

  @property
  def latent_shape(self) -> tuple[int, ...]:
    m = self.model
    if m.patch_size == 1:
      return (m.input_size, m.in_channels)
    return (m.input_size, m.input_size, m.in_channels)

  @property
  def image_size(self) -> int:
    return int(self.tokenizer.config["model"]["image_size"]) if self.tokenizer else 0


def sample_latents(
  model: SiT, params, labels: jax.Array, keys: jax.Array, settings: SamplerSettings, shape
) -> jax.Array:
  """Normalised latents (B, *shape) for labels (B,) and per-sample typed keys (B,). Traceable."""
  k_init = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  k_steps = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  x = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(k_init)
  null = model.num_classes
  s = settings
  if model.learn_sigma:
    if s.sampler != "diffusion":
      raise ValueError("a DiT (learn_sigma) model samples with sampler='diffusion'")
    d = GaussianDiffusion.create(s.noise_schedule, 1000, str(s.steps))
    fn = lambda x, t, y: model.apply({"params": params}, x, t.astype(jnp.float32), y)
    return diffusion_sample(d, fn, x, labels, cfg_scale=s.cfg_scale, null_label=null, key=k_steps)
  fn = lambda x, t, y: model.apply({"params": params}, x, t, y)
  kw = dict(cfg_scale=s.cfg_scale, cfg_interval=tuple(s.cfg_interval), null_label=null)
  if s.sampler == "ode":
    return ode_sample(fn, x, labels, steps=s.steps, heun=s.heun, **kw)
  if s.sampler == "sde":
    return sde_sample(fn, x, labels, steps=s.steps, path=s.path, key=k_steps, t_last=s.t_last, **kw)
  raise ValueError(f"a SiT model samples with sampler='ode' or 'sde', not {s.sampler!r}")


def make_sample_fn(
  model: SiT,
  shape: tuple[int, ...],
  settings: SamplerSettings,
  vq_mean: float,
  vq_std: float,
  tokenizer_model: Any = None,
):
  """fn(params, tok_params, labels (B,), keys (B,)) -> uint8 images (or raw z_q without a
  tokenizer model). Pure: jit it with whatever shardings the caller uses."""

  def run(params, tok_params, labels, keys):
    z = sample_latents(model, params, labels, keys, settings, shape) * vq_std + vq_mean
    if tokenizer_model is None:
      return z
    img = tokenizer_model.apply({"params": tok_params}, z, method=tokenizer_model.decode)
    return to_uint8(img, jnp, rounding="round")

  return run


def sample_keys(seed: int, indices) -> jax.Array:
  """Per-sample typed keys fold_in(key(seed), i) for sample indices (B,)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


class _Pipeline:
  """The jitted batch function for one (generator, settings), sharded over local devices."""

  def __init__(self, gen: Generator, settings: SamplerSettings, decode: bool):
    self.mesh = Mesh(np.asarray(jax.local_devices()), ("batch",))
    self.data = NamedSharding(self.mesh, P("batch"))
    rep = NamedSharding(self.mesh, P())
    self.params = jax.device_put(gen.params, rep)
    tok = gen.tokenizer if decode else None
    self.tok_params = jax.device_put(tok.params, rep) if tok is not None else None
    run = make_sample_fn(
      gen.model, gen.latent_shape, settings, gen.vq_mean, gen.vq_std, tok.model if tok else None
    )
    self.fn = jax.jit(run, out_shardings=self.data)

  def __call__(self, labels: np.ndarray, indices: np.ndarray, seed: int) -> np.ndarray:
    n, size = len(labels), self.mesh.devices.size
    pad = -n % size
    labels = np.concatenate([labels, np.repeat(labels[-1:], pad)]).astype(np.int32)
    indices = np.concatenate([indices, np.repeat(indices[-1:], pad)]).astype(np.uint32)
    keys = sample_keys(seed, indices)
    out = self.fn(
      self.params,
      self.tok_params,
      jax.device_put(labels, self.data),
      jax.device_put(keys, self.data),
    )
    return np.asarray(out)[:n]


def generate(
  gen: Generator,
  labels: Sequence[int] | np.ndarray,
  settings: SamplerSettings = SamplerSettings(),
  *,
  batch_size: int = 64,
  seed: int = 0,
  start_index: int = 0,
  decode: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (uint8 images (b, S, S, 3), labels (b,)) batch by batch for `labels` (N,).

  Sample j gets index `start_index + j` for its key, so a run can be split into chunks (e.g. over
  hosts) and give the same images. `decode=False` yields raw z_q latents instead of images.
  Every batch has `batch_size` rows except possibly the last (one extra compilation).
  """
  labels = np.asarray(labels, np.int64)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if len(labels) and (labels.min() < 0 or labels.max() > gen.model.num_classes):
    raise ValueError(
      f"labels must be in [0, {gen.model.num_classes}] ({gen.model.num_classes} = unconditional)"
    )
  if decode and gen.tokenizer is None:
    raise ValueError("decoding images needs the tokenizer: load_generator(..., tokenizer=PATH)")
  if (settings, decode) not in gen._pipelines:  # compiled once per settings, reused
    gen._pipelines[(settings, decode)] = _Pipeline(gen, settings, decode)
  pipe = gen._pipelines[(settings, decode)]
  for lo in range(0, len(labels), batch_size):
    lab = labels[lo : lo + batch_size]
    idx = start_index + lo + np.arange(len(lab))
    yield pipe(lab, idx, seed), lab


def generate_images(gen: Generator, labels, settings=SamplerSettings(), **kw) -> np.ndarray:
  """All images of `generate` concatenated (for small N; stream with `generate` otherwise)."""
  return np.concatenate([im for im, _ in generate(gen, labels, settings, **kw)])


def balanced_labels(num: int, num_classes: int = 1000) -> np.ndarray:
  """[0, 1, ..., C-1, 0, 1, ...] of length num (50 per class for 50k ImageNet samples)."""
  return np.arange(num) % num_classes


def parse_classes(spec: str, num_classes: int = 1000) -> np.ndarray:
  """ "" -> all classes; "0-9" -> range; "1,5,7" -> list; ranges and lists mix ("0-4,9")."""
  if not spec:
    return np.arange(num_classes)
  out = []
  for part in spec.split(","):
    a, sep, b = part.strip().partition("-")
    out.extend(range(int(a), int(b) + 1) if sep else [int(a)])
  cls = np.asarray(out)
  if cls.min() < 0 or cls.max() >= num_classes:
    raise ValueError(f"classes {spec!r} must lie in [0, {num_classes - 1}]")
  return cls


# ---- loading ------------------------------------------------------------------------------


def _generator_model(config: dict, **model_kw) -> SiT:
  """The generator module from a converted model dir's or a training checkpoint's config."""
  from softvq_jax.models.sit import generator_from_train_config
  from softvq_jax.weights.sit import generator_from_config

  m = config["model"]
  if "kind" in m:  # converted / exported model dir
    return generator_from_config(m, **model_kw)
  return generator_from_train_config(m, **model_kw)


def load_generator(
  path: str | os.PathLike,
  tokenizer: str | os.PathLike | Any | None = None,
  *,
  ema: bool = True,
  step: int | None = None,
  dtype=jnp.float32,
) -> Generator:
  """A Generator from a model dir (`python -m softvq_jax.convert sit` / `export_generator`) or a
  training workdir (EMA params of the latest checkpoint by default).

  `tokenizer`: a tokenizer dir/workdir (or a `PretrainedTokenizer`); default the one recorded in
  the generator's config (`model.tokenizer`). The latent statistics come from the generator's
  config (`model.vq_mean/vq_std`, written by the trainer) or else the tokenizer's config.
  """
  from softvq_jax import checkpointing
  from softvq_jax.weights import pretrained

  path = expand_path(path)  # local or gs://
  if (path / "config.json").is_file() and (path / "params").exists():
    params, config = checkpointing.load_model(path)
    model = _generator_model(config, dtype=dtype)
  elif (path / "checkpoints").is_dir():
    config = checkpointing.read_checkpoint_config(path, step)
    model = _generator_model(config, dtype=dtype)
    x = jnp.zeros((1, *Generator(model, None, None, 0, 1).latent_shape))
    abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    )["params"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mngr = checkpointing.CheckpointManager(path, async_save=False)
    params = mngr.restore_params(
      checkpointing.abstract_like(abstract, jax.tree.map(lambda _: device, abstract)),
      ema=ema,
      step=step,
    )
    mngr.close()
  else:
    raise FileNotFoundError(
      f"{path} is neither a generator model dir (config.json + params/) nor a training workdir "
      "(checkpoints/); convert a released SiT with `python -m softvq_jax.convert sit ...`"
    )
  m = config.get("model", {})
  tok_path = tokenizer if tokenizer is not None else m.get("tokenizer", "")
  tok = None
  if isinstance(tok_path, str | os.PathLike) and str(tok_path):
    tok = pretrained.load_tokenizer(tok_path)
  elif tok_path is not None and not isinstance(tok_path, str | os.PathLike):
    tok = tok_path
  if m.get("vq_std") is not None and "kind" not in m:
    mean, std = float(m["vq_mean"]), float(m["vq_std"])
  elif tok is not None:
    mean, std = tok.vq_mean, tok.vq_std
  else:
    mean, std = 0.0, 1.0
  if tok is not None:
    tm = tok.config["model"]
    want = (int(tm["num_latent_tokens"]), int(tm["codebook_embed_dim"]))
    if model.patch_size == 1 and want != (model.input_size, model.in_channels):
      raise ValueError(
        f"tokenizer latents are {want} (L, D) but the generator expects "
        f"{(model.input_size, model.in_channels)}: wrong --tokenizer for this generator"
      )
  return Generator(model, params, tok, mean, std)
