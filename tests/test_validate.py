"""config.validate, the one validator: tokenizer sections, objective, weight files, generators; the
choices it accepts are read from the registries of the lower layers."""

import ml_collections
import pytest
from test_tokenizer_model import tiny_cfg

from softvq_jax import data
from softvq_jax.config import defaults
from softvq_jax.config.validate import (
  QUANTIZER_CHECKS,
  ConfigError,
  check_weight_files,
  validate,
  validate_tokenizer,
)
from softvq_jax.models import factory
from softvq_jax.models.discriminators import DISCRIMINATORS
from softvq_jax.models.projector import ALIGN_MODES
from softvq_jax.models.quantizers import QUANTIZERS
from softvq_jax.objectives import transport
from softvq_jax.weights.io import WeightFileError

BAD = [
  ("model", "image_size", 33, "model.image_size"),
  ("model", "num_latent_tokens", 7, "quantizer.num_codebooks"),
  ("model", "to_pixel", "siren", "model.to_pixel"),
  ("model", "dtype", "float64", "model.dtype"),
  ("model", "attn_impl", "flash", "model.attn_impl"),
  ("model", "name", "maetok", "model.name"),
  ("model", "rope_mode", "axial", "model.rope_mode"),
  ("model", "vq_std", 0.0, "model.vq_std"),
  ("model", "codebook_embed_dim", 0, "model.codebook_embed_dim"),
  ("encoder", "variant", "XXL", "model.encoder.variant"),
  ("encoder", "heads", 5, "model.encoder.heads"),
  ("decoder", "patch_size", 5, "model.decoder.patch_size"),
  ("quantizer", "name", "fsq", "quantizer.name"),
  ("quantizer", "tau", 0.0, "quantizer.tau"),
  ("quantizer", "logit_form", "dot", "quantizer.logit_form"),
  ("quantizer", "codebook_size", 0, "quantizer.codebook_size"),
  ("quantizer", "entropy_temperature", -1.0, "quantizer.entropy_temperature"),
]


@pytest.mark.parametrize("section,key,value,named", BAD)
def test_config_validation_names_the_key(section, key, value, named):
  m, q = tiny_cfg()
  target = {"model": m, "quantizer": q, "encoder": m["encoder"], "decoder": m["decoder"]}[section]
  target[key] = value
  with pytest.raises(ValueError, match=named.replace(".", r"\.")):
    validate_tokenizer(m, q)
  with pytest.raises(ConfigError):  # a ValueError subclass, raised before anything compiles
    validate_tokenizer(m, q)


def test_rope_head_dim_must_be_multiple_of_4():
  m, q = tiny_cfg(use_rope=True)
  m["encoder"].update(width=72, heads=4)  # head_dim 18
  with pytest.raises(ValueError, match="head_dim"):
    validate_tokenizer(m, q)


def test_config_dict_is_accepted():
  m, q = tiny_cfg()
  validate_tokenizer(ml_collections.ConfigDict(m), ml_collections.ConfigDict(q))


def test_every_registered_quantizer_has_checks_and_validates():
  assert set(QUANTIZER_CHECKS) == set(QUANTIZERS)
  for name in QUANTIZERS:
    m, q = tiny_cfg()
    q["name"] = name
    validate_tokenizer(m, q)
  m, q = tiny_cfg()
  q.update(name="vq", commit_beta=-1.0)
  with pytest.raises(ConfigError, match=r"quantizer\.commit_beta"):
    validate_tokenizer(m, q)
  q.update(name="kl", kl_weight=-1.0)
  with pytest.raises(ConfigError, match=r"quantizer\.kl_weight"):
    validate_tokenizer(m, q)


def test_choices_come_from_the_registries():
  m, _ = tiny_cfg()
  for dtype in factory.DTYPES:
    validate_tokenizer({**m, "dtype": dtype}, tiny_cfg()[1])
  c = defaults.tokenizer_config("B", "quick")
  for mode in ALIGN_MODES:
    c.loss.align.mode = mode
    validate(c)
  c.loss.align.mode = "nearest"
  with pytest.raises(ConfigError, match=r"loss\.align\.mode='nearest'; known: \('repeat'"):
    validate(c)
  c = defaults.tokenizer_config("B", "quick")
  for name in DISCRIMINATORS:
    c.loss.disc.name = name
    c.loss.random_init = True  # "dino" would need its trunk file otherwise
    validate(c)


@pytest.mark.parametrize(
  "key,value,named",
  [
    ("loss", "wasserstein", "loss.disc.loss"),
    ("gen_loss", "bce", "loss.disc.gen_loss"),
    ("diffaug_policy", "color,zoom", "loss.disc.diffaug_policy"),
    ("cr_policy", "cutout_2", "loss.disc.cr_policy"),
    ("diffaug_prob", 1.5, "loss.disc.diffaug_prob"),
  ],
)
def test_gan_objective_keys(key, value, named):
  c = defaults.tokenizer_config("B", "quick")
  c.loss.disc[key] = value
  with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
    validate(c)


def test_alignment_and_accumulation_combinations():
  c = defaults.tokenizer_config("B", "quick")
  c.optim.grad_accum_steps = 2  # with the GAN term on (quick: loss.disc.weight > 0)
  with pytest.raises(ConfigError, match="grad_accum_steps"):
    validate(c)
  c = defaults.tokenizer_config("B", "quick")
  c.loss.random_init = True
  c.loss.align.weight = 0.1
  c.loss.align.teacher_variant = "tiny"
  c.loss.align.teacher_patch_size = 16
  c.model.num_latent_tokens = 16  # 64 px / 16 -> 4x4 teacher tokens; 16 % 16 == 0
  validate(c)
  c.loss.align.teacher_patch_size = 24
  with pytest.raises(ConfigError, match=r"loss\.align\.teacher_patch_size"):
    validate(c)
  c.loss.align.teacher_patch_size = 16
  c.loss.align.teacher_variant = "H"
  with pytest.raises(ConfigError, match=r"loss\.align\.teacher_variant"):
    validate(c)


def test_tokenizer_trains_on_images():
  c = defaults.tokenizer_config("B", "quick")
  c.data.name = "latents"
  with pytest.raises(ConfigError, match="tokenizer trains on images"):
    validate(c)


def test_weight_files(tmp_path):
  c = defaults.tokenizer_config("B", "quick")
  c.loss.disc.dino_variant = "XL"
  with pytest.raises(ConfigError, match=r"loss\.disc\.dino_variant='XL'"):
    check_weight_files(c)
  c.loss.disc.update(name="dino", dino_variant="tiny")
  with pytest.raises(ConfigError, match="only with random weights"):
    check_weight_files(c)
  c.loss.disc.dino_variant = "S"
  c.loss.disc.dino_path = str(tmp_path / "dino.safetensors")
  with pytest.raises(WeightFileError, match=r"dino\.safetensors.*loss\.disc\.dino_path"):
    validate(c)
  c.loss.random_init = True
  check_weight_files(c)  # random weights allowed explicitly
  (tmp_path / "dino.safetensors").write_bytes(b"")
  c.loss.random_init = False
  check_weight_files(c)


def _generator(**kw):
  c = defaults.generator_config("S", "quick")
  if kw.get("data.name", c.data.name) in ("latents", "folder"):  # the only readers of data.path
    c.data.path = "/cache"
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.mark.parametrize(
  "overrides,named",
  [
    ({"transport.path": "vp"}, "transport.path"),
    ({"transport.time_sampling": "beta"}, "transport.time_sampling"),
    ({"diffusion.noise_schedule": "sqrt"}, "diffusion.noise_schedule"),
    ({"sampling.sampler": "diffusion"}, "sampling.sampler"),
    ({"model.variant": "H"}, "model.variant"),
    ({"model.dtype": "int8"}, "model.dtype"),
    ({"data.name": "photos"}, "data.name"),
    ({"data.name": "latents_online"}, "data.tokenizer"),
    (
      {"data.name": "latents_online", "data.tokenizer": "t", "data.image_source": "x"},
      "image_source",
    ),
  ],
)
def test_generator_keys(overrides, named):
  validate(_generator())
  validate(_generator(**{"data.name": "latents_online", "data.tokenizer": "tok"}))
  with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
    validate(_generator(**overrides))


def test_generator_choices_come_from_the_registries():
  for path in transport.PATHS:
    for ts in transport.TIME_SAMPLING:
      validate(_generator(**{"transport.path": path, "transport.time_sampling": ts}))
  latent_sets = [n for n in data.DATASETS if n not in data.IMAGE_DATASETS]
  assert set(latent_sets) == {"latents", "latents_online"}
  assert set(data.LATENT_DATASETS) == set(latent_sets)  # the table validate.py reads


@pytest.mark.parametrize(
  "overrides,named",
  [
    ({"data.path": "/my/images"}, r"data\.path='/my/images' is set but only read with data\.name"),
    ({"data.manual_dir": "/tars"}, r"data\.manual_dir.*data\.name='imagenet'"),
    ({"loss.disc.weight": 0.0, "loss.disc.init_from": "/d"}, r"loss\.disc\.init_from.*weight > 0"),
    ({"loss.align.teacher_path": "/t.pth"}, r"loss\.align\.teacher_path.*loss\.align\.weight"),
  ],
)
def test_an_option_the_run_ignores_is_refused(overrides, named):
  """The README's old data line (data.path without data.name=folder) silently used the photos."""
  c = defaults.tokenizer_config("B", "quick")
  validate(c)
  for k, v in overrides.items():
    section, key = k.rsplit(".", 1)
    node = c
    for part in section.split("."):
      node = node[part]
    node[key] = v
  with pytest.raises(ConfigError, match=named):
    validate(c)


def test_every_missing_weight_file_is_named_at_once():
  from softvq_jax.weights.io import WeightFileError

  c = defaults.tokenizer_config("B")
  with pytest.raises(WeightFileError) as info:
    validate(c)
  message = str(info.value)
  assert message.startswith("3 weight files not found")
  for key in ("loss.lpips_lin_path", "loss.disc.dino_path", "loss.align.teacher_path"):
    assert key in message
