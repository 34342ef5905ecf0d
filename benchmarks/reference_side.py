"""The authors' PyTorch reference (Hhhhhhao/continuous_tokenizer) on our benchmark workloads.

  python benchmarks/reference_side.py --reference_repo=DIR --workload=NAME \
      --config_json=FILE --steps=N --threads=2

DIR: a checkout of the reference (put on sys.path). FILE: the workload's ConfigDict from
benchmarks/workloads.py, dumped with to_dict(). Prints `RESULT {json}` (workload, img_per_s,
step_ms, setup_s, peak_rss_mib, params_m, torch) and a PARAMS breakdown on stderr. fp32, random
init, synthetic inputs from seed 0 (images U[-1, 1], NCHW); build, 2 warm-up steps, then the mean
of --steps steps. params_m: what the workload's optimizers update (full_small: + the D heads).
  tok_small, tok_b64  one train/train_tokenizer.py iteration: SoftVQModel forward, VQLoss G loss,
                      backward, clip, AdamW (or Adam, per optim.name) step, update_ema. VQLoss runs
                      LPIPS and a D forward even at weight 0 (and the loop a D step): zero stubs
                      replace them here, so only MSE + the entropy term run, as on our side;
                      --as_is keeps them, as a run of the reference with those weights at 0 pays.
  full_small          + LPIPS-VGG16 and the DINO discriminator from step 0: the G step, then the
                      D step (its own optimizer) on the same reconstructions.
  sit_s               one train/train_sit.py iteration (SiT built directly: the reference's SiT-S
                      builders are broken) on N(0, 1) latents: SILoss, backward, clip, AdamW, EMA.
  b64_infer           SoftVQ-B-64 eval under torch.no_grad: encode then decode, 8 images.
Workarounds (none changes what is computed):
  - torchvision's C ops fail to register on this CPU torch: torch.library.register_fake ignores
    "torchvision::" ops (patched before torchvision or timm is imported).
  - Stubbed in sys.modules: `peft` (LoRA tuning only), `scipy` (encoder token drop only),
    `requests` (LPIPS checkpoint download only). einops and huggingface_hub must be installed.
  - No downloads: ViTs use pretrained=False; LPIPS gets a random VGG16 and skips its lin-layer
    checkpoint; DinoDisc gets an empty state dict (random DINO trunk) and runs on the CPU.
  - timm.create_model gets the ViT size (embed_dim, depth, num_heads, init_values) for every
    variant, so the 'mu' models are the same DINOv2-style timm ViT at the given sizes.
  - VQLoss's hard-coded DiffAugment policies are mapped to loss.disc.diffaug_* / cr_policy.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import random
import resource
import sys
import time
import types
import warnings

import numpy as np
import torch

VIT = {  # variant -> (timm name, depth, width, heads), as softvq_jax.models.vit.VIT_VARIANTS
  "mu": ("vit_base_patch14_dinov2.lvd142m", 2, 64, 4),  # non-DINOv2 sizes: the B def, resized
  "Ti": ("vit_base_patch14_dinov2.lvd142m", 12, 192, 3),
  "S": ("vit_small_patch14_dinov2.lvd142m", 12, 384, 6),
  "B": ("vit_base_patch14_dinov2.lvd142m", 12, 768, 12),
  "L": ("vit_large_patch14_dinov2.lvd142m", 24, 1024, 16),
}
SIT = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
REFERENCE_MODULES = (  # imported as ref.<last name>
  "modelling.tokenizer modelling.modules.timm_vit.timm_vit_models modelling.sit"
  " modelling.lpips.lpips modelling.discriminators.discriminator_dino"
  " losses.vq_loss losses.sit_loss utils.ema utils.optim"
).split()
WORKLOADS = ("tok_small", "tok_b64", "full_small", "sit_s", "b64_infer")


def _patch_register_fake() -> None:
  orig = torch.library.register_fake

  def register_fake(op, fn=None, /, *args, **kwargs):
    if isinstance(op, str) and op.startswith("torchvision::"):
      return fn if fn is not None else (lambda f: f)
    return orig(op, fn, *args, **kwargs) if fn is not None else orig(op, *args, **kwargs)

  torch.library.register_fake = register_fake


def _import_reference(repo: str) -> types.SimpleNamespace:
  """The reference modules, patched so that nothing is downloaded."""
  _patch_register_fake()
  for name in ("peft", "requests", "scipy", "scipy.stats"):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules["scipy"].stats = sys.modules["scipy.stats"]
  sys.path.insert(0, repo)
  warnings.filterwarnings("ignore")
  import torchvision

  ref = types.SimpleNamespace(
    **{n.rsplit(".", 1)[-1]: importlib.import_module(n) for n in REFERENCE_MODULES}
  )
  ref.lpips.models = types.SimpleNamespace(
    vgg16=lambda pretrained=False: torchvision.models.vgg16()
  )
  ref.lpips.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None
  torch.hub.load_state_dict_from_url = lambda *a, **k: {}  # DinoDisc: random DINO trunk
  ref.vq_loss.DinoDiscriminator = functools.partial(ref.discriminator_dino.DinoDisc, device="cpu")
  return ref


def _vit(section: dict, layerscale: float) -> tuple[str, dict]:
  """(timm name, create_model size kwargs) of a model.encoder / .decoder section (0: variant's)."""
  name, d0, w0, h0 = VIT[section["variant"]]
  size = dict(
    depth=section.get("depth") or d0,
    embed_dim=section.get("width") or w0,
    num_heads=section.get("heads") or h0,
    init_values=layerscale,
  )
  return name, size


def build_tokenizer(ref, c: dict):
  """SoftVQModel as train_tokenizer.py builds it (enc/dec 'vit'), sized by the config."""
  m, q = c["model"], c["quantizer"]
  if q["name"] != "softvq" or m["name"] != "softvq":
    raise SystemExit(f"error: only the SoftVQ tokenizer is mapped, not {q['name']!r}")
  enc_name, enc_size = _vit(m["encoder"], m["layerscale_init"])
  dec_name, dec_size = _vit(m["decoder"], m["layerscale_init"])
  sizes = iter([enc_size, dec_size])  # VQModel builds the encoder first, then the decoder
  orig = ref.timm_vit_models.create_model

  def create_model(name, pretrained=False, **kwargs):
    return orig(name, pretrained=False, **kwargs, **next(sizes))

  ref.timm_vit_models.create_model = create_model
  same_m = ("image_size", "codebook_embed_dim", "num_latent_tokens", "to_pixel", "dec_cls_token")
  same_m += ("use_rope", "rope_theta", "vq_mean", "vq_std")  # fields named as in ModelArgs
  same_q = ("codebook_size", "entropy_loss_ratio", "tau", "num_codebooks")
  kw = {k: m[k] for k in same_m} | {k: q[k] for k in same_q}
  args = ref.tokenizer.ModelArgs(
    **kw,
    base_image_size=m["image_size"],
    codebook_l2_norm=q["l2_norm"],
    enc_type="vit",
    dec_type="vit",
    encoder_model=enc_name,
    decoder_model=dec_name,
    enc_pretrained=False,
    dec_pretrained=False,
    enc_patch_size=m["encoder"]["patch_size"],
    dec_patch_size=m["decoder"]["patch_size"],
    rope_mixed=m["use_rope"],  # our RoPE is the reference's (working) mixed variant
  )
  try:
    return ref.tokenizer.SoftVQModel(args)
  finally:
    ref.timm_vit_models.create_model = orig


class _Zero(torch.nn.Module):
  """Stands in for LPIPS / the discriminator when their weight is 0 (VQLoss runs them anyway)."""

  def forward(self, x, *args):
    return x.new_zeros(())


def build_vq_loss(ref, c: dict, as_is: bool = False):
  """VQLoss as train_tokenizer.py builds it, from the config's loss section.

  as_is: as the reference runs a weight-0 LPIPS / discriminator (built, run, and the D step
  taken every iteration, the result multiplied by 0) instead of zero stubs.
  """
  loss, disc = c["loss"], c["loss"]["disc"]
  gan = disc["weight"] > 0 or as_is
  if gan and disc["name"] != "dino":
    raise SystemExit(f"error: only the DINO discriminator is mapped, not {disc['name']!r}")
  if loss["align"]["weight"] > 0:
    raise SystemExit("error: the REPA alignment loss is not mapped (it needs a DINOv2 teacher)")
  perceptual = loss["perceptual_weight"] > 0 or as_is
  vq_loss = ref.vq_loss.VQLoss(
    disc_start=disc["start"],
    disc_loss=disc["loss"],
    disc_type="dino" if gan else "patchgan",
    image_size=c["model"]["image_size"],
    disc_weight=disc["weight"],
    disc_adaptive_weight=disc["adaptive_weight"],
    gen_adv_loss=disc["gen_loss"],
    reconstruction_loss=loss["rec_type"],
    reconstruction_weight=loss["rec_weight"],
    perceptual_loss="vgg" if perceptual else "none",
    perceptual_weight=loss["perceptual_weight"],
    perceptual_warmup=loss["perceptual_warmup"] or None,
    lecam_loss_weight=disc["lecam_weight"] if gan and disc["lecam_weight"] > 0 else None,
    disc_cr_loss_weight=disc["cr_weight"] if gan else 0.0,
    use_diff_aug=gan and disc["diffaug"],
  )
  if not perceptual:
    vq_loss.perceptual_loss = _Zero()
  if gan:
    if vq_loss.lecam_loss_weight is not None:
      vq_loss.lecam_ema.decay = disc["lecam_decay"]
    policies = {  # VQLoss's hard-coded policies -> the config's
      "color,translation,cutout_0.2": (disc["diffaug_policy"], disc["diffaug_prob"]),
      "color,translation,cutout_0.5": (disc["cr_policy"], 1.0),
    }
    aug = ref.vq_loss.DiffAugment
    ref.vq_loss.DiffAugment = lambda x, policy, prob: aug(x, *policies.get(policy, (policy, prob)))
  else:
    vq_loss.discriminator = _Zero()
  return vq_loss.train()  # as the reference loop does (LPIPS dropout on)


def _optimizer(ref, model, o: dict, lr: float):
  """The reference tokenizer optimizer (train_tokenizer.py: --optimizer adam | adamw)."""
  betas = (o["b1"], o["b2"])
  if o["name"] == "adam":
    return torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
  groups = ref.optim.param_groups_weight_decay(model, weight_decay=o["weight_decay"])
  return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=o["weight_decay"])


def _ema(ref, model):
  """The EMA copy, as both reference loops make it (deepcopy, no grad, update_ema(decay=0))."""
  ema = copy.deepcopy(model).eval()
  ref.ema.requires_grad(ema, False)
  ref.ema.update_ema(ema, model, decay=0)
  return ema


def _trainable(module) -> int:
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def tokenizer_workload(ref, c: dict, as_is: bool = False):
  """(step fn, images per step, trainable params) of tok_small / tok_b64 / full_small."""
  o, b, s = c["optim"], c["batch_size"], c["model"]["image_size"]
  model = build_tokenizer(ref, c).train()
  ema = _ema(ref, model)
  vq_loss = build_vq_loss(ref, c, as_is)
  lr = o["lr"] * b / 256 if o["lr_batch_scaling"] else o["lr"]
  opt = _optimizer(ref, model, o, lr)
  gan = not isinstance(vq_loss.discriminator, _Zero)
  opt_d = _optimizer(ref, vq_loss.discriminator, o, lr) if gan else None
  x = torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
  state = {"step": 0}
  kw = dict(logger=None, log_every=1 << 62)

  def step():
    state["step"] += 1
    opt.zero_grad()
    rec, codebook_loss, _ = model(x)
    last = model.decoder.last_layer
    loss = vq_loss(codebook_loss, x, rec, 0, state["step"], last_layer=last, **kw)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
    opt.step()
    ref.ema.update_ema(ema, model, decay=o["ema_decay"])
    total = loss.item()
    if gan:
      opt_d.zero_grad()
      loss_d = vq_loss(codebook_loss, x, rec, 1, state["step"], **kw)
      loss_d.backward()
      torch.nn.utils.clip_grad_norm_(vq_loss.discriminator.parameters(), o["grad_clip"])
      opt_d.step()
      total += loss_d.item()
    return total

  unused = _trainable(model.decoder.model.patch_embed)
  heads = _trainable(vq_loss.discriminator)
  frozen = {}
  if gan:  # frozen nets (not trained, not counted): LPIPS (VGG16 + lin layers), the DINO trunk
    nets = {"lpips": [vq_loss.perceptual_loss], "dino": vq_loss.discriminator.dino_proxy}
    frozen = {k: sum(p.numel() for m in v for p in m.parameters()) for k, v in nets.items()}
  _log(tokenizer=_trainable(model), unused_decoder_patch_embed=unused, disc_heads=heads, **frozen)
  return step, b, _trainable(model) + heads


def sit_workload(ref, c: dict):
  """(step fn, images per step, trainable params) of sit_s: one train_sit.py iteration."""
  m, o, t, b = c["model"], c["optim"], c["transport"], c["batch_size"]
  if m["patch_size"] != 1:
    raise SystemExit("error: only the 1-D (patch 1) SiT is mapped")
  arch = dict(zip(("depth", "hidden_size", "num_heads"), SIT[m["variant"]]))
  tokens, dim = m["num_tokens"], m["dim"]  # workloads.py's synthetic latent size
  model = ref.sit.SiT(
    input_size=tokens,
    in_channels=dim,
    **arch,
    decoder_hidden_size=arch["hidden_size"],  # the SiT-S builders omit it (broken)
    patch_size=1,
    num_classes=m["num_classes"],
    class_dropout_prob=m["class_dropout_prob"],
    vae_1d=True,
    fused_attn=False,  # train_sit.py's block_kwargs defaults
    qk_norm=m["qk_norm"],
    flash_attn=True,
  ).train()
  ema = _ema(ref, model)
  loss_fn = ref.sit_loss.SILoss(
    prediction=t["prediction"], path_type=t["path"], weighting=t["time_sampling"], encoders=[]
  )
  adamw = dict(lr=o["lr"], betas=(o["b1"], o["b2"]), weight_decay=o["weight_decay"], eps=o["eps"])
  opt = torch.optim.AdamW(model.parameters(), **adamw)
  g = torch.Generator().manual_seed(0)
  x = torch.randn(b, tokens, dim, generator=g)
  y = torch.randint(0, m["num_classes"], (b,), generator=g)

  def step():
    loss, proj_loss = loss_fn(model, x, dict(y=y), zs=[])
    loss = loss.mean() + proj_loss.mean() * 0.5  # --proj-coeff 0.5 (default); proj_loss is 0
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    ref.ema.update_ema(ema, model, decay=o["ema_decay"])
    return loss.item()

  _log(sit=_trainable(model), fixed_pos_embed=model.pos_embed.numel())
  return step, b, _trainable(model)


def infer_workload(ref, c: dict):
  """(call fn, images per call, params) of b64_infer: encode + decode as reconstruction does."""
  model = build_tokenizer(ref, c).eval()
  s = c["model"]["image_size"]
  x = torch.rand(8, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1

  @torch.no_grad()
  def call():
    quant, _, _ = model.encode(x)
    return model.decode(quant)

  return call, 8, _trainable(model)


def _log(**counts) -> None:
  print("PARAMS " + json.dumps(counts), file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--reference_repo", required=True, help="checkout of the reference repo")
  p.add_argument("--workload", required=True, choices=WORKLOADS)
  p.add_argument("--config_json", required=True, help="the workload's ConfigDict.to_dict()")
  p.add_argument("--steps", type=int, default=5, help="timed steps")
  p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
  p.add_argument("--as_is", action="store_true", help="weight-0 LPIPS / D run as in the reference")
  a = p.parse_args(argv)
  torch.set_num_threads(a.threads)
  torch.manual_seed(0), random.seed(0), np.random.seed(0)
  with open(a.config_json) as f:
    config = json.load(f)
  t0 = time.perf_counter()
  ref = _import_reference(a.reference_repo)
  builder = {"sit_s": sit_workload, "b64_infer": infer_workload}.get(a.workload)
  if builder is None:
    step, images, params = tokenizer_workload(ref, config, a.as_is)
  else:
    step, images, params = builder(ref, config)
  setup_s = time.perf_counter() - t0
  for _ in range(2):
    step()
  t = time.perf_counter()
  for _ in range(a.steps):
    step()
  dt = (time.perf_counter() - t) / a.steps
  result = {
    "workload": a.workload,
    "img_per_s": images / dt,
    "step_ms": dt * 1e3,
    "setup_s": setup_s,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "params_m": params / 1e6,
    "torch": torch.__version__,
    "as_is": a.as_is,
  }
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
