"""Config files, argument parsing, durations and validation errors."""

import importlib.util
import pathlib

import pytest

from softvq_jax.config.validate import ConfigError, validate
from softvq_jax.training import optim

CONFIG_DIR = pathlib.Path(__file__).parents[1] / "configs"


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize(
  "name,enc,dec",
  [
    ("tokenizer_s", "S", "S"),
    ("tokenizer_b", "B", "B"),
    ("tokenizer_bl", "B", "L"),
    ("tokenizer_l", "L", "L"),
  ],
)
@pytest.mark.parametrize("arg", [None, "tokens=32", "tokens=32,res=512", "quick"])
def test_every_config_builds_and_validates(name, enc, dec, arg):
  c = load_config(name, arg)
  if arg != "quick":
    # The full recipes need the LPIPS / DINO / DINOv2 files (named when missing).
    from softvq_jax.weights.io import WeightFileError

    with pytest.raises(WeightFileError, match="loss.lpips_lin_path"):
      validate(c)
    c.loss.random_init = True
  validate(c)
  if arg != "quick":
    assert (c.model.encoder.variant, c.model.decoder.variant) == (enc, dec)
    # Latent size is 2048 floats per image for 32 and 64 tokens (SPEC §1.3).
    assert c.model.num_latent_tokens * c.model.codebook_embed_dim == 2048


def test_args_select_tokens_and_resolution():
  c = load_config("tokenizer_b", "tokens=32,res=512")
  assert c.model.num_latent_tokens == 32 and c.model.codebook_embed_dim == 64
  assert c.model.image_size == 512
  assert load_config("tokenizer_b").model.image_size == 256


def test_quick_is_small_and_uses_the_bundled_photos():
  c = load_config("tokenizer_b", "quick")
  assert c.data.name == "photos" and c.model.dtype == "float32"
  assert c.total_steps > 0 and c.batch_size <= 32


def test_full_recipe_values():
  """SoftVQ-B-64: every recipe value of SPEC §1.3–1.4."""
  c = load_config("tokenizer_b")
  assert c.data.name == "imagenet" and c.batch_size == 256 and c.total_epochs == 50
  assert (c.quantizer.name, c.quantizer.codebook_size, c.quantizer.num_codebooks) == (
    "softvq",
    8192,
    4,
  )
  assert c.quantizer.tau == 0.07 and c.quantizer.l2_norm and c.quantizer.entropy_loss_ratio == 0.01
  o = c.optim
  assert (o.name, o.lr, o.b1, o.b2, o.weight_decay) == ("adamw", 1e-4, 0.9, 0.95, 1e-4)
  assert (o.warmup_epochs, o.min_lr_ratio, o.grad_clip, o.ema_decay) == (1.0, 0.1, 1.0, 0.9999)
  assert c.model.dtype == "bfloat16"
  # The objective of SPEC §1.4.
  loss = c.loss
  assert (loss.rec_type, loss.rec_weight) == ("l2", 1.0)
  assert (loss.perceptual_weight, loss.perceptual_warmup) == (1.0, 10_000)
  d = loss.disc
  assert (d.name, d.weight, d.start, d.loss, d.gen_loss) == ("dino", 0.2, 20_000, "hinge", "hinge")
  assert not d.adaptive_weight and d.diffaug and d.diffaug_prob == 0.5
  assert d.diffaug_policy == "color,translation,cutout_0.2"
  assert (d.lecam_weight, d.lecam_decay, d.cr_weight) == (0.001, 0.999, 4.0)
  assert d.cr_policy == "color,translation,cutout_0.5"
  a = loss.align
  assert (a.weight, a.mode, a.proj_dim, a.teacher_variant) == (0.1, "repeat", 1024, "L")
  assert a.teacher_patch_size == 16 and not loss.random_init
  assert c.quantizer.entropy_temperature == 0.01
  assert (c.model.encoder.patch_size, c.model.decoder.patch_size) == (16, 16)
  assert c.seed == 42 and c.data.random_flip and c.data.min_crop_frac == 0.8


@pytest.mark.parametrize(
  "arg,msg",
  [
    ("tokens=48", "tokens=48"),
    ("res=300", "res=300"),
    ("foo=1", "unknown config argument"),
    ("tokens=abc", "not a int"),
  ],
)
def test_bad_arguments(arg, msg):
  with pytest.raises(ValueError, match=msg):
    load_config("tokenizer_b", arg)


@pytest.mark.parametrize(
  "mutate,msg",
  [
    (lambda c: setattr(c.quantizer, "num_codebooks", 3), "num_codebooks"),
    (lambda c: setattr(c.model, "image_size", 250), "image_size"),
    (lambda c: setattr(c.model.encoder, "patch_size", 12), "patch_size"),
    (lambda c: setattr(c.quantizer, "name", "fsq"), "quantizer"),
    (lambda c: setattr(c.optim, "name", "sgd"), "optim.name"),
    (lambda c: setattr(c.optim, "ema_decay", 1.0), "ema_decay"),
    (lambda c: setattr(c.data, "name", "cifar"), "data.name"),
    (lambda c: setattr(c, "batch_size", 0), "batch_size"),
    (lambda c: setattr(c.optim, "grad_accum_steps", 3), "grad_accum_steps"),
    (lambda c: setattr(c, "trainer", "gan"), "trainer"),
  ],
)
def test_validation_names_the_bad_key(mutate, msg):
  c = load_config("tokenizer_b", "quick")
  mutate(c)
  with pytest.raises(ConfigError, match=msg):
    validate(c)


def test_folder_dataset_needs_a_path():
  c = load_config("tokenizer_b", "quick")
  c.data.name = "folder"
  with pytest.raises(ConfigError, match="data.path"):
    validate(c)


def test_steps_from_epochs_and_lr_scaling():
  c = load_config("tokenizer_b")
  total, warmup = optim.steps_from(c, num_examples=1_281_167)
  assert total == -(-50 * 1_281_167 // 256) and warmup == -(-1_281_167 // 256)
  with pytest.raises(ValueError, match="dataset size"):
    optim.steps_from(c, None)
  c.batch_size = 1024
  assert optim.learning_rate(c) == pytest.approx(4e-4)


def test_missing_weight_file_names_the_file_and_key(tmp_path):
  from softvq_jax.weights.io import WeightFileError

  c = load_config("tokenizer_b", "quick")
  c.model.encoder_init = str(tmp_path / "dinov2_vitb14.safetensors")
  with pytest.raises(WeightFileError, match=r"dinov2_vitb14.safetensors.*model.encoder_init"):
    validate(c)
