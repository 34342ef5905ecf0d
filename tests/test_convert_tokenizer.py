"""Reference <-> Flax tokenizer conversion: exact round trips, the CLI, error reporting and the
reference-config mapping."""

import json
import pathlib

import jax
import numpy as np
import pytest

from softvq_jax.models.factory import abstract_params, build_tokenizer, resolve_vit
from softvq_jax.weights import io as cio
from softvq_jax.weights import (
  model_to_reference_config,
  reference_to_model_config,
  tokenizer_from_reference,
  tokenizer_to_reference,
)
from softvq_jax.weights.tokenizer import infer_quantizer_name

FIXTURES_DIR = pathlib.Path(__file__).parent / "fixtures"
UNUSED = (
  "decoder.model.patch_embed.proj.weight",
  "decoder.model.patch_embed.proj.bias",
  "quantize.codebook_used",
)


def load(name):
  config = json.loads((FIXTURES_DIR / f"{name}.config.json").read_text())
  with np.load(FIXTURES_DIR / f"{name}.npz") as data:
    sd = {k[len("param/") :]: data[k] for k in data.files if k.startswith("param/")}
  return config, sd


@pytest.mark.parametrize("name", ["softvq_small", "softvq_small_rope"])
def test_round_trip_is_exact(name):
  config, sd = load(name)
  _, params = tokenizer_from_reference(config, sd)
  back = tokenizer_to_reference(params, config)
  assert set(back) == set(sd)  # strict loading in PyTorch works
  for k, v in sd.items():
    assert back[k].shape == v.shape and back[k].dtype == np.float32, k
    if k in UNUSED:
      assert not back[k].any()  # written as zeros
    else:
      np.testing.assert_array_equal(back[k], v, err_msg=k)  # bitwise
  _, params2 = tokenizer_from_reference(config, back)
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_cli_both_directions(tmp_path):
  from softvq_jax import checkpointing
  from softvq_jax.cli.convert import main

  config, sd = load("softvq_small_rope")
  weights, cfg_file = tmp_path / "ref" / "model.safetensors", tmp_path / "ref" / "config.json"
  cio.save_safetensors(sd, weights)
  cfg_file.write_text(json.dumps(config))
  out = tmp_path / "converted"
  main(["tokenizer", "--config", str(cfg_file), "--weights", str(weights), "--out", str(out)])
  params, saved = checkpointing.load_model(out)
  assert saved["reference_config"] == config
  assert saved["model"]["use_rope"] and saved["quantizer"]["codebook_size"] == 32
  _, want = tokenizer_from_reference(config, sd)
  jax.tree.map(np.testing.assert_array_equal, params, want)

  back_file = tmp_path / "back" / "model.safetensors"
  main(["tokenizer-to-reference", "--checkpoint", str(out), "--out", str(back_file)])
  back = cio.load_state_dict(back_file)
  assert set(back) == set(sd)
  for k in set(sd) - set(UNUSED):
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  assert json.loads((back_file.parent / "config.json").read_text()) == config


def test_cli_missing_weights_names_the_file(tmp_path):
  from softvq_jax.cli.convert import main

  cfg = tmp_path / "config.json"
  cfg.write_text(json.dumps(load("softvq_small")[0]))
  with pytest.raises(cio.WeightFileError, match="nope.safetensors.*--weights"):
    main(
      [
        "tokenizer",
        "--config",
        str(cfg),
        "--weights",
        str(tmp_path / "nope.safetensors"),
        "--out",
        str(tmp_path / "o"),
      ]
    )


def test_missing_and_unknown_keys_are_listed_together():
  config, sd = load("softvq_small")
  del sd["encoder.model.blocks.1.mlp.fc2.bias"], sd["quantize.embedding"]
  sd["encoder.model.blocks.7.ls1.gamma"] = np.zeros(64, np.float32)
  sd["quantize.embedding"] = np.zeros((2, 64, 8), np.float32)  # back, so softvq is inferred
  del sd["decoder.mask_token"]
  with pytest.raises(KeyError) as e:
    tokenizer_from_reference(config, sd)
  msg = str(e.value)
  for key in (
    "encoder.model.blocks.1.mlp.fc2.bias",
    "decoder.mask_token",
    "encoder.model.blocks.7.ls1.gamma",
  ):
    assert key in msg


def test_shape_mismatch_is_reported():
  config, sd = load("softvq_small")
  sd["quant_conv.weight"] = np.zeros((8, 32), np.float32)
  sd["decoder.latent_pos_embed"] = np.zeros((1, 9, 64), np.float32)
  with pytest.raises(ValueError, match=r"quant_conv\.weight \(8, 32\)") as e:
    tokenizer_from_reference(config, sd)
  assert "decoder.latent_pos_embed (1, 9, 64)" in str(e.value)


def test_training_only_keys_are_dropped_and_rope_buffers_checked():
  config, sd = load("softvq_small_rope")
  extra = dict(
    sd,
    **{
      "repa_model.blocks.0.norm1.weight": np.ones(3, np.float32),
      "projection.0.weight": np.ones((2, 2), np.float32),
    },
  )
  tokenizer_from_reference(config, extra)
  bad = dict(sd, **{"encoder.freqs_t_x": sd["encoder.freqs_t_x"][::-1].copy()})
  with pytest.raises(ValueError, match="encoder.freqs_t_x"):
    tokenizer_from_reference(config, bad)


HF_BL64 = {  # the published SoftVQVAE/softvq-bl-64 config.json fields (REFERENCE_NOTES §11)
  "image_size": 256,
  "codebook_size": 8192,
  "codebook_embed_dim": 32,
  "codebook_l2_norm": True,
  "codebook_show_usage": True,
  "commit_loss_beta": 0.25,
  "entropy_loss_ratio": 0.0,
  "vq_loss_ratio": 1.0,
  "kl_loss_weight": 1e-6,
  "tau": 0.07,
  "num_codebooks": 4,
  "enc_type": "vit",
  "dec_type": "vit",
  "encoder_model": "vit_base_patch14_dinov2.lvd142m",
  "decoder_model": "vit_large_patch14_dinov2.lvd142m",
  "num_latent_tokens": 64,
  "enc_patch_size": 16,
  "dec_patch_size": 16,
  "enc_pretrained": True,
  "dec_pretrained": False,
  "enc_tuning_method": "full",
  "dec_tuning_method": "full",
  "repa": False,
  "repa_model": "vit_large_patch14_dinov2.lvd142m",
  "repa_layer_indices": [0],
  "vq_mean": -0.00077168207,
  "vq_std": 0.07157949,
}


def test_reference_config_mapping_with_defaults():
  cfg = reference_to_model_config(HF_BL64)
  m, q = cfg["model"], cfg["quantizer"]
  assert m["encoder"] == dict(variant="B", patch_size=16, depth=12, width=768, heads=12)
  assert m["decoder"] == dict(variant="L", patch_size=16, depth=24, width=1024, heads=16)
  assert (m["num_latent_tokens"], m["codebook_embed_dim"], m["image_size"]) == (64, 32, 256)
  # keys missing from the released config take the ModelArgs defaults
  assert (m["use_rope"], m["dec_cls_token"], m["to_pixel"]) == (False, True, "linear")
  assert (m["vq_mean"], m["vq_std"]) == (-0.00077168207, 0.07157949)
  assert q == dict(
    name="softvq",
    codebook_size=8192,
    num_codebooks=4,
    tau=0.07,
    l2_norm=True,
    logit_form="cosine",
    entropy_loss_ratio=0.0,
    entropy_temperature=0.01,
    commit_beta=0.25,
    kl_weight=1e-6,
  )
  minimal = reference_to_model_config(
    {
      "enc_type": "vit",
      "dec_type": "vit",
      "encoder_model": "vit_small_patch14_dinov2",
      "decoder_model": "vit_small_patch14_dinov2.lvd142m",
    }
  )
  assert minimal["quantizer"]["tau"] == 0.1 and minimal["quantizer"]["codebook_size"] == 16384
  assert minimal["model"]["num_latent_tokens"] == 256 and minimal["model"]["encoder"]["heads"] == 6


@pytest.mark.parametrize(
  "change,match",
  [
    ({"encoder_model": "vit_base_patch14_reg4_dinov2.lvd142m"}, "encoder_model"),
    ({"decoder_model": "vit_giant_patch14_dinov2.lvd142m"}, "SwiGLU"),
    ({"use_rope": True, "rope_mixed": False}, "axial"),
    ({"use_ape": False}, "use_ape"),
    ({"to_pixel": "siren"}, "to_pixel"),
    ({"enc_type": "cnn", "encoder_model": "llamagen_encoder"}, "CNN"),
    ({"vit_overrides": {"mlp_ratio": 2}}, "vit_overrides"),
  ],
)
def test_unsupported_reference_configs(change, match):
  with pytest.raises(ValueError, match=match):
    reference_to_model_config({**HF_BL64, **change})


def _resolved(cfg):
  """Config with backbone sections as resolved (depth, width, heads, patch)."""
  m = dict(cfg["model"])
  for part in ("encoder", "decoder"):
    m[part] = resolve_vit(m[part], part)
  return {"model": m, "quantizer": cfg["quantizer"]}


def _fake_params(model, seed=0):
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: rs.randn(*s.shape).astype(np.float32), abstract_params(model))


def _ours(**kw):
  vit = dict(variant="mu", patch_size=8, depth=1, width=0, heads=0)
  m = dict(
    name="softvq",
    image_size=16,
    encoder=dict(vit),
    decoder=dict(vit),
    num_latent_tokens=4,
    codebook_embed_dim=4,
    layerscale_init=1e-5,
    use_rope=False,
    rope_theta=10.0,
    dec_cls_token=True,
    to_pixel="linear",
    dtype="float32",
    remat=False,
    attn_impl="",
    vq_mean=0.5,
    vq_std=2.0,
  )
  q = dict(
    name="softvq",
    codebook_size=8,
    num_codebooks=2,
    tau=0.07,
    l2_norm=True,
    logit_form="cosine",
    entropy_loss_ratio=0.01,
    entropy_temperature=0.01,
    commit_beta=0.25,
    kl_weight=1e-6,
  )
  for k, v in kw.items():
    section, key = k.split("__")
    if section == "decoder":
      m["decoder"][key] = v
    else:
      (m if section == "model" else q)[key] = v
  if q["name"] != "softvq":
    q["num_codebooks"] = 1
  return {"model": m, "quantizer": q}


@pytest.mark.parametrize(
  "kw",
  [
    {},
    {"model__use_rope": True},
    {"quantizer__name": "vq"},
    {"quantizer__name": "kl"},
    {"quantizer__name": "ae"},
    {"decoder__variant": "S", "decoder__depth": 1, "decoder__patch_size": 16},
    {"model__to_pixel": "conv", "decoder__patch_size": 16},
  ],
)
def test_our_models_export_to_reference_and_back(kw):
  ours = _ours(**kw)
  ref_cfg = model_to_reference_config(ours)
  assert _resolved(reference_to_model_config(ref_cfg)) == _resolved(ours)  # survives the trip
  model = build_tokenizer(ours["model"], ours["quantizer"])
  params = _fake_params(model)
  sd = tokenizer_to_reference(params, ref_cfg)
  assert (
    infer_quantizer_name({k: v for k, v in ref_cfg.items() if k != "model_class"}, sd)
    == ours["quantizer"]["name"]
  )
  _, params2 = tokenizer_from_reference(ref_cfg, sd)
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def _hf_tiny():
  """The field set of the released SoftVQVAE/softvq-bl-64 config.json (flat, no model_args), with
  tiny values; `vit_overrides` (ours) shrinks the DINOv2-B/L backbones to 1 block of width 32."""
  cfg = dict(HF_BL64, image_size=32, codebook_size=16, codebook_embed_dim=4, num_latent_tokens=4)
  cfg["vit_overrides"] = {"embed_dim": 32, "depth": 1, "num_heads": 2}
  return cfg


def _hf_folder(root, cfg, sd):
  """A folder as `huggingface-cli download SoftVQVAE/<repo> --local-dir` leaves it."""
  cio.save_safetensors(sd, root / "model.safetensors")
  (root / "config.json").write_text(json.dumps(cfg, indent=2))
  (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# SoftVQ-VAE\n")
  (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
  return root


def test_hf_repo_folder_converts_as_downloaded(tmp_path):
  """`--weights <downloaded folder>` alone, `--weights <file>` (config.json beside it) and both
  files given explicitly convert to the same params; the config is flat, as published."""
  from softvq_jax import checkpointing
  from softvq_jax.cli.convert import main

  cfg = _hf_tiny()
  ours = reference_to_model_config(cfg)
  model = build_tokenizer(ours["model"], ours["quantizer"])
  params = _fake_params(model, seed=4)
  sd = tokenizer_to_reference(params, cfg)
  folder = _hf_folder(tmp_path / "softvq-bl-64", cfg, sd)
  runs = {
    "folder": ["--weights", str(folder)],
    "file": ["--weights", str(folder / "model.safetensors")],
    "both": [
      "--config",
      str(folder / "config.json"),
      "--weights",
      str(folder / "model.safetensors"),
    ],
  }
  for name, args in runs.items():
    out = main(["tokenizer", *args, "--out", str(tmp_path / name)])
    got, saved = checkpointing.load_model(out)
    jax.tree.map(np.testing.assert_array_equal, got, params)
    assert saved["reference_config"] == cfg and saved["model"]["vq_std"] == HF_BL64["vq_std"]


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compile_prefixes_are_stripped(prefix):
  """A state dict saved from a DDP / torch.compile wrapper (every key prefixed) converts as is."""
  config, sd = load("softvq_small")
  _, want = tokenizer_from_reference(config, sd)
  _, got = tokenizer_from_reference(config, {prefix + k: v for k, v in sd.items()})
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_training_checkpoint_wrappers_take_the_ema_weights():
  """A reference training checkpoint {"model", "ema", "optimizer", ...} gives its EMA weights
  (as the reference sampling scripts' find_model); {"state_dict": ...} its content."""
  raw, ema = {"w": np.zeros(2)}, {"w": np.ones(2)}
  ckpt = {"model": raw, "ema": ema, "optimizer": {"state": {}}, "steps": 5}
  assert cio.unwrap_state_dict(ckpt) is ema
  assert cio.unwrap_state_dict({"model": raw, "optimizer": {}}) is raw
  assert cio.unwrap_state_dict({"state_dict": raw}) is raw
  with pytest.raises(ValueError, match="expected a state dict"):
    cio.unwrap_state_dict([raw])


def test_hf_folder_without_weights_or_config_is_named(tmp_path):
  from softvq_jax.cli.convert import main

  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "README.md").write_text("card")
  with pytest.raises(
    cio.WeightFileError, match=r"empty is a folder without model\.safetensors.*README"
  ):
    main(["tokenizer", "--weights", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
  cio.save_safetensors(load("softvq_small")[1], tmp_path / "w" / "model.safetensors")
  with pytest.raises(cio.WeightFileError, match="no config.json beside"):
    main(["tokenizer", "--weights", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
