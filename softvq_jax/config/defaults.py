"""Every config default: `get_config(arg)` argument parsing and one builder per model family.

The files in `configs/` are thin: each names a variant and calls a builder here, so every default
lives in one place. Arguments come after the colon of `--config=configs/tokenizer_b.py:ARG`, e.g.
`tokens=32,res=512` or `quick`; any field can then be overridden with `--config.a.b=value`.
"""

from __future__ import annotations

import ml_collections

ConfigDict = ml_collections.ConfigDict

# name -> (encoder ViT, decoder ViT). "L-32" as released is BL-shaped (SPEC §1.3).
TOKENIZER_VARIANTS = {"S": ("S", "S"), "B": ("B", "B"), "BL": ("B", "L"), "L": ("L", "L")}


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
  """'tokens=32,res=512,quick' -> ConfigDict; bare names are booleans; types follow `defaults`."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if not _:
      if kind is not bool:
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif kind is bool:
      out[key] = value.lower() in ("1", "true", "yes", "on")
    else:
      try:
        out[key] = kind(value)
      except ValueError as e:
        raise ValueError(f"config argument {key}={value!r} is not a {kind.__name__}") from e
  return ConfigDict(out)


def _vit(variant: str, patch_size: int = 16) -> ConfigDict:
  return ConfigDict(dict(variant=variant, patch_size=patch_size, depth=0, width=0, heads=0))


def tokenizer_config(variant: str, arg: str | None = None) -> ConfigDict:
  """The SoftVQ tokenizer recipe (SPEC §1.3–1.4) for `variant` in S/B/BL/L.

  Arguments: tokens (32|64), res (256|512), quick (tiny model on the bundled photos, CPU minutes).
  """
  if variant not in TOKENIZER_VARIANTS:
    raise ValueError(
      f"unknown tokenizer variant {variant!r}; choose from {list(TOKENIZER_VARIANTS)}"
    )
  a = parse_arg(arg, tokens=64, res=256, quick=False)
  if a.tokens not in (32, 64) and not a.quick:
    raise ValueError(f"tokens={a.tokens}: the released recipes use 32 or 64 latent tokens")
  if a.res not in (256, 512) and not a.quick:
    raise ValueError(f"res={a.res}: the recipes are for 256 or 512 px")
  enc, dec = TOKENIZER_VARIANTS[variant]
  c = ConfigDict()
  c.trainer = "tokenizer"
  c.variant = variant
  c.seed = 42
  c.batch_size = 256  # global
  c.total_epochs = 50.0  # used when total_steps == 0
  c.total_steps = 0
  c.stop_after = 0  # >0: stop (with a checkpoint) after this step, e.g. to split a run into jobs
  c.log_every = 100
  c.eval_every = 5000
  c.image_every = 5000
  # In-training evaluation: at most this many eval images (0: the whole split); the published
  # numbers come from `python -m softvq_jax.evaluate` on the full split.
  c.max_eval_images = 10000

  c.model = ConfigDict()
  c.model.name = "softvq"
  c.model.image_size = a.res
  c.model.encoder = _vit(enc)
  c.model.decoder = _vit(dec)
  c.model.num_latent_tokens = a.tokens
  # Latent size is 2048 floats per image either way: 64 x 32 or 32 x 64.
  c.model.codebook_embed_dim = 2048 // a.tokens
  c.model.layerscale_init = 1e-5
  c.model.use_rope = False
  c.model.rope_theta = 10.0
  c.model.dec_cls_token = True
  c.model.to_pixel = "linear"
  c.model.dtype = "bfloat16"
  c.model.remat = False
  c.model.attn_impl = ""
  c.model.vq_mean = 0.0
  c.model.vq_std = 1.0
  # timm-layout DINOv2 safetensors to initialise the encoder from (the released recipe);
  # empty -> random init (logged).
  c.model.encoder_init = ""

  c.quantizer = ConfigDict()
  c.quantizer.name = "softvq"
  c.quantizer.codebook_size = 8192
  c.quantizer.num_codebooks = 4
  c.quantizer.tau = 0.07
  c.quantizer.l2_norm = True
  c.quantizer.logit_form = "cosine"
  c.quantizer.entropy_loss_ratio = 0.01
  c.quantizer.entropy_temperature = 0.01
  c.quantizer.commit_beta = 0.25
  c.quantizer.kl_weight = 1e-6

  c.loss = ConfigDict()
  c.loss.rec_type = "l2"
  c.loss.rec_weight = 1.0
  c.loss.perceptual_weight = 1.0
  c.loss.perceptual_warmup = 10_000
  c.loss.lpips_vgg_path = ""
  c.loss.lpips_lin_path = ""
  c.loss.random_init = False  # allow random-weight teachers / discriminators (tests, CPU smoke)
  c.loss.disc = ConfigDict()
  c.loss.disc.name = "dino"  # dino (frozen DINO ViT-S/16 + heads) | patchgan (no weights needed)
  c.loss.disc.ndf = 64  # patchgan width / depth
  c.loss.disc.n_layers = 3
  c.loss.disc.weight = 0.2
  c.loss.disc.start = 20_000
  c.loss.disc.loss = "hinge"
  c.loss.disc.gen_loss = "hinge"
  c.loss.disc.adaptive_weight = False
  c.loss.disc.dino_path = ""
  # Model dir of converted reference DinoDisc heads (python -m softvq_jax.convert dino-disc) to
  # start the discriminator from on a fresh run; empty: random heads.
  c.loss.disc.init_from = ""
  c.loss.disc.dino_variant = "S"  # S: published ViT-S/16; tiny: random weights (tests, smoke)
  c.loss.disc.diffaug = True
  c.loss.disc.diffaug_policy = "color,translation,cutout_0.2"
  c.loss.disc.diffaug_prob = 0.5
  c.loss.disc.lecam_weight = 0.001
  c.loss.disc.lecam_decay = 0.999
  c.loss.disc.cr_weight = 4.0
  c.loss.disc.cr_policy = "color,translation,cutout_0.5"
  c.loss.align = ConfigDict()
  c.loss.align.weight = 0.1
  c.loss.align.teacher_path = ""
  c.loss.align.teacher_variant = "L"
  c.loss.align.mode = "repeat"  # repeat | global | avg_1d | avg_1d_shuffle
  c.loss.align.proj_dim = 1024
  c.loss.align.teacher_patch_size = 16

  # AdamW (decay off biases and 1-D params); lr at batch 256, scaled linearly with the global batch.
  c.optim = _optim_section(
    lr=1e-4,
    lr_batch_scaling=True,
    b2=0.95,
    weight_decay=1e-4,
    schedule="cosine",
    warmup_epochs=1.0,  # used when warmup_steps == 0
    warmup_init_lr=1e-5,  # timm's warmup_lr
    min_lr_ratio=0.1,
    grad_clip=1.0,
  )

  c.data = ConfigDict()
  c.data.name = "imagenet"
  c.data.path = ""
  c.data.eval_path = ""
  c.data.eval_fraction = 0.1
  c.data.data_dir = ""  # TFDS data_dir, local or mounted ("" = TFDS default ~/tensorflow_datasets)
  c.data.manual_dir = ""  # the ImageNet tars; prepares data_dir on a first single-process run
  c.data.tfds_name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.file_format = ""
  # imagenet: auto (array_record on local disk, else tfrecord) | array_record | tfrecord (gs://)
  c.data.reader = "auto"
  c.data.tfrecord_streams = 16  # tfrecord reader: sequential streams (divide the global batch)
  c.data.random_crop = True
  c.data.random_flip = True
  c.data.min_crop_frac = 0.8  # ADM: crops cover 80-100% of the (resized) short side
  c.data.num_workers = 0  # decode threads per host; 0: every core this process may use
  c.data.prefetch = 4
  c.data.uint8_transfer = True  # ship uint8 train batches, convert to [-1, 1] on device
  c.data.jpeg_draft = False  # reduced-size JPEG decode where ADM halves anyway (not bitwise)
  c.data.exact_resize = False  # True: resize whole images, then crop (bitwise ADM; slower)
  c.data.eval_crops = 4

  c.eval = ConfigDict()
  c.eval.batch_size = 64
  c.eval.num_images_grid = 8

  _add_run_sections(c, save_every=10_000, keep_every=50_000)

  if a.quick:
    _make_quick(c, a)
  return c


def _optim_section(**values) -> ConfigDict:
  """The `optim` section: every key the optimizer reads (training/optim.py), with `values` set."""
  c = ConfigDict(
    dict(
      name="adamw",
      lr=1e-4,
      lr_batch_scaling=False,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      schedule="constant",
      warmup_steps=0,
      warmup_epochs=0.0,
      warmup_init_lr=0.0,
      min_lr_ratio=0.0,
      grad_clip=0.0,
      ema_decay=0.9999,
      grad_accum_steps=1,
    )
  )
  for k, v in values.items():
    if k not in c:
      raise KeyError(f"optim.{k} is not an optimizer key")
    c[k] = v
  return c


def _add_run_sections(c: ConfigDict, *, save_every: int, keep_every: int) -> None:
  """The checkpoint and mesh sections every trainer's config has."""
  # restore_step: 0 resumes from the newest good checkpoint; N from step N (newer ones are moved
  # to <workdir>/checkpoints_set_aside/, never deleted).
  c.ckpt = ConfigDict(
    dict(save_every=save_every, keep=3, keep_every=keep_every, async_save=True, restore_step=0)
  )
  c.mesh = ConfigDict(dict(data=-1, fsdp=1))  # data=-1: all devices not used by fsdp
  # "stop": a non-finite loss/state stops the run (never saved); "skip_step": drop such updates.
  c.nan_policy = "stop"
  # MFU on the progress line / TensorBoard: peak TFLOP/s per device; 0: from training/flops.py.
  c.peak_tflops = 0.0
  # jax.profiler trace of num_steps steps from start_step under <workdir>/profile; 0: off.
  c.profile = ConfigDict(dict(start_step=0, num_steps=0))


def _make_quick(c: ConfigDict, a: ConfigDict) -> None:
  """A tiny tokenizer on the bundled photos that trains on 2 CPU cores in a few minutes."""
  c.model.image_size = 64 if a.res == 256 else a.res
  for part in (c.model.encoder, c.model.decoder):
    part.variant = "mu"
    part.patch_size = 8
    part.depth, part.width, part.heads = 3, 128, 4
  c.model.layerscale_init = 1.0  # from scratch (no DINOv2): full residual branches from step 0
  c.model.num_latent_tokens = 32 if a.tokens == 64 else a.tokens
  c.model.codebook_embed_dim = 16
  c.model.dtype = "float32"
  c.quantizer.codebook_size = 512
  c.quantizer.num_codebooks = 2
  # MSE + PatchGAN + entropy: the terms that need no pretrained weights.
  c.loss.perceptual_weight = 0.0
  c.loss.disc.name = "patchgan"
  c.loss.disc.ndf = 32
  c.loss.disc.n_layers = 2
  c.loss.disc.start = 500
  c.loss.align.weight = 0.0
  c.batch_size = 16
  c.total_steps = 1000
  c.optim.lr = 1e-3
  c.optim.lr_batch_scaling = False
  c.optim.warmup_steps = 50
  c.optim.ema_decay = 0.99
  c.log_every = 50
  c.eval_every = 250
  c.image_every = 250
  c.data.name = "photos"
  # Nine photos are few: train on random crops covering 20-100% of the short side, which gives
  # far more varied patches (and generalises to the held-out photos) than ADM's 80-100%.
  c.data.min_crop_frac = 0.2
  c.data.num_workers = 2
  c.data.prefetch = 2
  c.eval.batch_size = 8
  c.ckpt.save_every = 250
  c.ckpt.keep_every = 0


GENERATOR_VARIANTS = ("S", "B", "L", "XL")


def generator_config(variant: str, arg: str | None = None) -> ConfigDict:
  """SiT (or DiT, kind=dit) on tokenizer latents (SPEC §2.2) for `variant` in S/B/L/XL.

  Arguments: tokenizer=<model dir or workdir> (for sample grids; default: the cache's), kind
  (sit|dit), tokens (0: L from the latents; else checked against them), res (image size, for
  the record; the cache's wins), quick (a tiny SiT on cached latents of the bundled photos).
  The latents: --config.data.path=<cache dir> (data.name=latents).
  """
  if variant not in GENERATOR_VARIANTS:
    raise ValueError(f"unknown generator variant {variant!r}; choose from {GENERATOR_VARIANTS}")
  a = parse_arg(arg, tokenizer="", kind="sit", tokens=0, res=256, quick=False)
  if a.kind not in ("sit", "dit"):
    raise ValueError(f"kind={a.kind!r}; use sit or dit")
  c = ConfigDict()
  c.trainer = a.kind
  c.variant = variant
  c.seed = 0
  c.batch_size = 256
  c.total_steps = 3_000_000  # the paper's generators (the reference script's default: 400k)
  c.total_epochs = 0.0
  c.stop_after = 0
  c.log_every = 100
  c.eval_every = 10_000
  c.image_every = 10_000
  c.max_eval_images = 0

  c.model = ConfigDict()
  c.model.name = a.kind
  c.model.variant = variant
  c.model.patch_size = 1  # 1-D tokens ("/1")
  c.model.num_tokens = a.tokens  # 0: from the latents (resolved into the saved config)
  c.model.dim = 0
  c.model.num_classes = 1000
  c.model.class_dropout_prob = 0.1
  c.model.qk_norm = False
  c.model.dtype = "bfloat16"
  c.model.remat = False
  c.model.attn_impl = ""
  c.model.image_size = a.res
  c.model.tokenizer = a.tokenizer
  c.model.latent_stats = "cache"  # cache | tokenizer (the tokenizer config's vq_mean/vq_std)
  c.model.vq_mean = 0.0  # resolved from the latents unless vq_std > 0 is given
  c.model.vq_std = 0.0

  c.transport = ConfigDict()
  c.transport.path = "linear"
  c.transport.prediction = "v"
  c.transport.time_sampling = "lognormal"

  c.diffusion = ConfigDict()
  c.diffusion.noise_schedule = "cosine"
  c.diffusion.steps = 1000

  c.optim = _optim_section(  # constant AdamW 1e-4, no decay (SPEC §2.2)
    b2=0.999,
    grad_clip=1.0 if a.kind == "sit" else 0.0,  # train_dit.py does not clip
  )

  c.data = ConfigDict()
  c.data.name = "latents"
  c.data.path = ""
  c.data.eval_path = ""
  c.data.eval_examples = 1000
  c.data.random_flip = True
  c.data.num_workers = 4
  c.data.prefetch = 2
  c.data.tokenizer = ""  # latents_online
  c.data.image_source = "photos"

  c.sampling = ConfigDict()  # preview grids (the reference: Euler 50 steps, CFG 4.0)
  c.sampling.sampler = "ode"
  c.sampling.steps = 50
  c.sampling.heun = False
  c.sampling.cfg_scale = 4.0
  c.sampling.cfg_low = 0.0
  c.sampling.cfg_high = 1.0

  c.eval = ConfigDict()
  c.eval.batch_size = 64
  c.eval.num_batches = 8
  c.eval.num_images_grid = 16

  _add_run_sections(c, save_every=50_000, keep_every=100_000)

  if a.quick:
    c.model.variant = "mu"
    c.model.dtype = "float32"
    c.model.num_classes = 16
    c.batch_size = 16
    c.total_steps = 400
    c.optim.lr = 1e-3
    c.optim.ema_decay = 0.99
    c.log_every = 50
    c.eval_every = 100
    c.image_every = 200
    c.data.num_workers = 2
    c.eval.batch_size = 8
    c.eval.num_batches = 2
    c.eval.num_images_grid = 8
    c.sampling.steps = 20
    c.ckpt.save_every = 200
    c.ckpt.keep_every = 0
  return c
