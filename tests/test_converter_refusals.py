"""Converters refuse what they should (issue 16, item 8), each case by name, for every reader of a
user-supplied weight or config file: the tokenizer, SiT and DINO-discriminator converters (both
directions) and the frozen-net loaders (DINO trunk, DINOv2 teacher and encoder init, Inception,
LPIPS).

Refused: a float parameter stored as int32 or bool (it used to be cast silently), NaN / Inf values,
unknown config keys (a `tua` typo used to convert with the default tau), values of the wrong type
(`"sixteen"`), unparsable JSON / YAML. Every error is a UserError naming the file and the key, and
the CLI prints it as one line with exit status 2. Files are tiny random weights in the exact
published key layouts (the helpers of the loaders' own tests).
"""

import json
import pathlib

import numpy as np
import pytest
from test_alignment import timm_state_dict
from test_convert_dino_disc import TINY, random_reference
from test_dinov2_init import _tokenizer, dinov2_state_dict
from test_frozen_dino import official_state_dict

from softvq_jax import checkpointing
from softvq_jax.cli.convert import main, run
from softvq_jax.models.frozen.inception import param_shapes
from softvq_jax.utils.errors import UserError
from softvq_jax.weights import dino, dinov2, inception, lpips, sit
from softvq_jax.weights import io as cio
from softvq_jax.weights.checks import ReferenceConfigError, WeightValueError
from softvq_jax.weights.dinov2_init import init_encoder_from_dinov2

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# How a leaf is damaged, and the words the error must use for it.
DAMAGE = {
  "int32": (lambda a: np.round(a * 10).astype(np.int32), "dtype int32"),
  "bool": (lambda a: a > 0, "dtype bool"),
  "nan": (lambda a: np.where(np.arange(a.size).reshape(a.shape) % 3 == 0, np.nan, a), "NaN"),
  "inf": (lambda a: np.full_like(a, np.inf), "non-finite"),
}


def _fixture(name):
  config = json.loads((FIXTURES / f"{name}.config.json").read_text())
  with np.load(FIXTURES / f"{name}.npz") as data:
    sd = {k[len("param/") :]: data[k] for k in data.files if k.startswith("param/")}
  return config, sd


def _write(tmp, name, sd, config=None):
  """sd (and config.json beside it) as a folder laid out as the HF repos are."""
  folder = tmp / name
  cio.save_safetensors(sd, folder / "model.safetensors")
  if config is not None:
    (folder / "config.json").write_text(json.dumps(config))
  return folder


def _tokenizer_cli(tmp, sd, config):
  folder = _write(tmp, "softvq", sd, config)
  return main(["tokenizer", "--weights", str(folder), "--out", str(tmp / "out")])


def _sit_cli(tmp, sd, config):
  folder = _write(tmp, "sit", sd, config)
  return main(["sit", "--weights", str(folder), "--out", str(tmp / "out")])


def _disc_cli(tmp, sd):
  path = tmp / "disc.safetensors"
  cio.save_safetensors(sd, path)
  return main(["dino-disc", "--weights", str(path), "--out", str(tmp / "o"), "--variant", "tiny"])


def _saved(tmp, sd, load):
  path = tmp / "w.safetensors"
  cio.save_safetensors(sd, path)
  return load(path)


def _inception_sd():
  rng = np.random.default_rng(0)
  flat = cio.flatten(param_shapes())
  params = cio.nest({p: rng.normal(size=s.shape).astype(np.float32) for p, s in flat.items()})
  return inception.torch_state_dict(params)


def _lpips_lin(tmp, sd):
  """The heads file `sd` (vgg.pth layout) with a valid VGG trunk file beside it."""
  vgg = tmp / "vgg16.safetensors"
  lpips.write_random_weights(vgg, "torchvision")
  return _saved(tmp, sd, lambda p: lpips.load_lpips_params(vgg, p))


def _lpips_vgg(tmp, sd):
  lin = tmp / "vgg_lin.safetensors"
  lpips.write_random_weights(lin, "lpips_lin")
  return _saved(tmp, sd, lambda p: lpips.load_lpips_params(p, lin))


def _encoder_init(tmp, sd):
  params = _tokenizer(14, 28)
  return _saved(
    tmp,
    sd,
    lambda p: init_encoder_from_dinov2(
      params, cio.load_state_dict(p), patch_size=14, image_size=28
    ),
  )


# converter name -> (state dict in its published layout, the key to damage, convert(tmp, sd))
CONVERTERS = {
  "tokenizer": (
    lambda: _fixture("softvq_small")[1],
    "encoder.model.blocks.0.attn.qkv.weight",
    lambda tmp, sd: _tokenizer_cli(tmp, sd, _fixture("softvq_small")[0]),
  ),
  "sit": (
    lambda: _fixture("sit_small")[1],
    "blocks.1.mlp.fc1.weight",
    lambda tmp, sd: _sit_cli(tmp, sd, _fixture("sit_small")[0]),
  ),
  "dino-disc": (lambda: random_reference(c=TINY), "heads.2.1.fn.0.weight_orig", _disc_cli),
  "dino-trunk": (
    lambda: official_state_dict(extra=False),
    "blocks.3.attn.qkv.weight",
    lambda tmp, sd: _saved(tmp, sd, dino.load_dino_params),
  ),
  "dinov2-teacher": (
    lambda: timm_state_dict(grid=2, patch=16),
    "blocks.1.mlp.fc2.weight",
    lambda tmp, sd: _saved(
      tmp, sd, lambda p: dinov2.load_teacher_params(p, variant="tiny", image_size=32)
    ),
  ),
  "dinov2-encoder-init": (lambda: dinov2_state_dict(grid=2), "pos_embed", _encoder_init),
  "inception": (
    _inception_sd,
    "Mixed_5b.branch1x1.conv.weight",
    lambda tmp, sd: _saved(tmp, sd, inception.load_inception_params),
  ),
  "lpips-lin": (
    lambda: lpips.torch_state_dict(lpips.random_lpips_params(0), "lpips_lin"),
    "lin2.model.1.weight",
    _lpips_lin,
  ),
  "lpips-vgg": (
    lambda: lpips.torch_state_dict(lpips.random_lpips_params(0), "torchvision"),
    "features.10.weight",
    _lpips_vgg,
  ),
}


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_undamaged_files_convert(tmp_path, converter):
  """The files below are valid: what refuses them is the damage alone."""
  make, key, convert = CONVERTERS[converter]
  sd = make()
  assert key in sd and sd[key].dtype == np.float32, key
  convert(tmp_path, sd)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_damaged_leaf_is_refused_naming_file_and_key(tmp_path, converter, damage):
  make, key, convert = CONVERTERS[converter]
  sd = make()
  bad_fn, words = DAMAGE[damage]
  sd[key] = bad_fn(np.asarray(sd[key], np.float32))
  with pytest.raises(WeightValueError) as e:
    convert(tmp_path / "bad", sd)
  msg = str(e.value)
  assert isinstance(e.value, UserError)
  assert f"`{key}`" in msg and words in msg, msg
  assert str(tmp_path / "bad") in msg, msg  # the file


def _cfg_file_cases():
  """(name, converter, edit of the config's fields, words of the error)."""
  return [
    ("tau-typo", "tokenizer", lambda c: c.update(tua=c.pop("tau")), ["`tua`", "`tau`"]),
    ("tau-nan", "tokenizer", lambda c: c.update(tau=float("nan")), ["`tau`", "finite number"]),
    (
      "sixteen",
      "tokenizer",
      lambda c: c.update(num_latent_tokens="sixteen"),
      ["`num_latent_tokens`", "'sixteen'", "integer"],
    ),
    (
      "bool-as-string",
      "tokenizer",
      lambda c: c.update(codebook_l2_norm="false"),
      ["`codebook_l2_norm`", "true or false"],
    ),
    ("fractional-int", "tokenizer", lambda c: c.update(codebook_size=64.5), ["`codebook_size`"]),
    (
      "override-typo",
      "tokenizer",
      lambda c: c.update(vit_overrides={"embed_dim": 64, "dept": 2, "num_heads": 4}),
      ["`dept`", "`depth`"],
    ),
    (
      "heads-typo",
      "sit",
      lambda c: c.update(num_head=c.pop("num_heads")),
      ["`num_head`", "`num_heads`"],
    ),
    ("sixteen", "sit", lambda c: c.update(depth="sixteen"), ["`depth`", "'sixteen'"]),
  ]


@pytest.mark.parametrize(
  "name,converter,edit,words", _cfg_file_cases(), ids=[f"{c[1]}-{c[0]}" for c in _cfg_file_cases()]
)
def test_bad_config_fields_are_refused_naming_file_and_key(tmp_path, name, converter, edit, words):
  fixture = {"tokenizer": "softvq_small", "sit": "sit_small"}[converter]
  config, sd = _fixture(fixture)
  fields = config.get("model_args", config.get("model_kwargs", config))
  if name == "override-typo":
    fields = config
  edit(fields)
  cli = _tokenizer_cli if converter == "tokenizer" else _sit_cli
  with pytest.raises(ReferenceConfigError) as e:
    cli(tmp_path, sd, config)
  msg = str(e.value)
  assert str(tmp_path / ("softvq" if converter == "tokenizer" else "sit") / "config.json") in msg
  for w in words:
    assert w in msg, (w, msg)


def test_flat_hf_config_typo_is_refused_with_a_hint():
  """The released configs are flat (no model_args): an unknown key there is refused too, while
  every published field (repa_layer_indices of an older ModelArgs included) is accepted."""
  from test_convert_tokenizer import HF_BL64

  from softvq_jax.weights.reference_config import reference_to_model_config

  assert reference_to_model_config(HF_BL64)["quantizer"]["tau"] == 0.07
  bad = {**HF_BL64, "tua": 0.07}
  del bad["tau"]
  with pytest.raises(ReferenceConfigError, match=r"`tua` \(did you mean `tau`\?\)"):
    reference_to_model_config(bad)


@pytest.mark.parametrize(
  "suffix,text,words",
  [
    (".json", '{"image_size": 64,\n "tau": 0.07,,}', ["not valid JSON", "line 2"]),
    (".json", "[1, 2]", ["must hold an object", "list"]),
    (".yaml", "image_size: 64\ntau: [0.07\n", ["not valid YAML"]),
  ],
  ids=["json-syntax", "json-not-an-object", "yaml-syntax"],
)
@pytest.mark.parametrize("converter", ["tokenizer", "sit"])
def test_unparsable_config_names_the_file(tmp_path, suffix, text, words, converter):
  _, sd = _fixture("softvq_small" if converter == "tokenizer" else "sit_small")
  weights = tmp_path / "model.safetensors"
  cio.save_safetensors(sd, weights)
  cfg = tmp_path / f"config{suffix}"
  cfg.write_text(text)
  args = [converter, "--config", str(cfg), "--weights", str(weights), "--out", str(tmp_path / "o")]
  with pytest.raises(ReferenceConfigError) as e:
    main(args)
  for w in [str(cfg), *words]:
    assert w in str(e.value), (w, str(e.value))


def test_yaml_config_with_the_same_fields_converts(tmp_path):
  import yaml

  config, sd = _fixture("softvq_small")
  cio.save_safetensors(sd, tmp_path / "model.safetensors")
  (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
  main(
    [
      "tokenizer",
      "--config",
      str(tmp_path / "config.yaml"),
      "--weights",
      str(tmp_path / "model.safetensors"),
      "--out",
      str(tmp_path / "o"),
    ]
  )
  assert checkpointing.load_model(tmp_path / "o")[1]["quantizer"]["tau"] == 0.07


def test_counter_of_the_wrong_kind_is_refused(tmp_path):
  """BatchNorm's num_batches_tracked must be an integer scalar (a float 7.5 or NaN is damage)."""
  sd = random_reference(c=TINY)
  key = "heads.1.0.1.num_batches_tracked"
  sd[key] = np.asarray(np.nan, np.float32)
  with pytest.raises(WeightValueError, match=rf"disc\.safetensors: `{key}` must be an integer"):
    _disc_cli(tmp_path, sd)


@pytest.mark.parametrize(
  "command", ["tokenizer-to-reference", "sit-to-reference", "dino-disc-to-reference"]
)
def test_reverse_converters_refuse_non_finite_params(tmp_path, command):
  """A model dir holding NaN (a diverged run) is not exported; the error names the param."""
  if command == "tokenizer-to-reference":
    config, sd = _fixture("softvq_small")
    main(
      [
        "tokenizer",
        "--weights",
        str(_write(tmp_path, "ref", sd, config)),
        "--out",
        str(tmp_path / "m"),
      ]
    )
  elif command == "sit-to-reference":
    config, sd = _fixture("sit_small")
    _sit_cli(tmp_path, sd, config)
    (tmp_path / "out").rename(tmp_path / "m")
  else:
    _disc_cli(tmp_path, random_reference(c=TINY))
    (tmp_path / "o").rename(tmp_path / "m")
  tree, cfg = checkpointing.load_model(tmp_path / "m")
  flat = cio.flatten(tree)
  path = sorted(flat)[len(flat) // 2]
  flat[path] = np.full(np.shape(flat[path]), np.nan, np.float32)
  checkpointing.save_model(tmp_path / "nan", cio.nest(flat), cfg)
  with pytest.raises(WeightValueError) as e:
    main([command, "--checkpoint", str(tmp_path / "nan"), "--out", str(tmp_path / "x.safetensors")])
  assert "/".join(path[-3:]) in str(e.value) and "NaN" in str(e.value)
  assert not (tmp_path / "x.safetensors").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
  config, sd = _fixture("softvq_small")
  config["model_args"]["tua"] = config["model_args"].pop("tau")
  folder = _write(tmp_path, "softvq-bl-64", sd, config)
  with pytest.raises(SystemExit) as e:
    run(["tokenizer", "--weights", str(folder), "--out", str(tmp_path / "o")])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "Traceback" not in err[0], err
  assert str(folder / "config.json") in err[0] and "`tua`" in err[0] and "`tau`" in err[0]
  assert not (tmp_path / "o").exists()
  with pytest.raises(ReferenceConfigError):  # --traceback re-raises
    run(["tokenizer", "--weights", str(folder), "--out", str(tmp_path / "o"), "--traceback"])


def test_sit_learn_sigma_config_is_type_checked(tmp_path):
  """A DiT's bool field given as a string ("true") is refused rather than read as truthy."""
  config, sd = _fixture("sit_small")
  config["model_kwargs"]["learn_sigma"] = "true"
  with pytest.raises(ReferenceConfigError, match="`learn_sigma` must be true or false"):
    sit.model_from_reference_config(config)
