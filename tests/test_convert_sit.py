"""SiT / DiT both ways through the CLI: released checkpoints laid out as the Hugging Face
`SoftVQVAE/sit-xl_*` / `dit-xl_*` repos -> model dirs, and model dirs / training workdirs -> the
reference PyTorch layout (`sit-to-reference`), round-trip exact.

Random weights with the reference key layout stand in for the released files (nothing is
downloaded here); the sizes are tiny, the file names, config fields and key names are the real
ones.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
from test_generator_trainer import _config, setup  # noqa: F401 (setup is a fixture)

from softvq_jax import checkpointing
from softvq_jax.cli.convert import main
from softvq_jax.models.sit import build_generator
from softvq_jax.training import loop
from softvq_jax.training.generator import GeneratorTask
from softvq_jax.weights import io as cio
from softvq_jax.weights import sit

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# The fields of a released HF SiT config.json (REFERENCE_NOTES §7.1, sit-xl_softvq-bl-32), tiny.
HF_SIT = {
  "in_channels": 8,
  "input_size": 16,
  "depth": 2,
  "hidden_size": 64,
  "num_heads": 4,
  "class_dropout_prob": 0.1,
  "num_classes": 1000,
  "qk_norm": False,
  "vae_1d": True,
  "path_type": "edm",
}
# DiT (modelling/dit.py): the hub mixin records the constructor's arguments, card fields included.
HF_DIT = {
  "input_size": 16,
  "in_channels": 8,
  "hidden_size": 64,
  "depth": 2,
  "num_heads": 4,
  "mlp_ratio": 4.0,
  "class_dropout_prob": 0.1,
  "num_classes": 1000,
  "learn_sigma": True,
  "patch_size": 1,
  "vae_1d": True,
  "tags": ["arxiv:2412.10958", "image-generation", "32 tokens", "DiT"],
  "repo_url": "https://github.com/Hhhhhhao/continuous_tokenizer",
  "license": "apache-2.0",
}


def fixture_reference():
  """(config, state dict) of the reference SiT fixture (produced by the PyTorch code)."""
  config = json.loads((FIXTURES / "sit_small.config.json").read_text())
  with np.load(FIXTURES / "sit_small.npz") as data:
    sd = {k[len("param/") :]: data[k] for k in data.files if k.startswith("param/")}
  return config, sd


def random_reference(config, seed=0):
  """A random state dict with the reference keys/shapes (and the fixed pos_embed) of `config`."""
  model = sit.model_from_reference_config(config)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
    lambda a: rng.normal(size=a.shape).astype(np.float32), sit.abstract_params(model)
  )
  return sit.sit_to_reference(params, model), params


def hf_folder(root, config, state_dict):
  """A folder as `huggingface-cli download SoftVQVAE/<repo> --local-dir` leaves it."""
  root.mkdir(parents=True)
  (root / "config.json").write_text(json.dumps(config, indent=2))
  cio.save_safetensors(state_dict, root / "model.safetensors")
  (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# model card\n")
  (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
  return root


def assert_same_reference(got, want, pos_tol=1e-6):
  """Identical keys and tensors; `pos_embed` (a fixed buffer we recompute) within `pos_tol`."""
  assert set(got) == set(want)
  for k, v in want.items():
    assert got[k].shape == v.shape and got[k].dtype == v.dtype, k
    if k == "pos_embed":
      np.testing.assert_allclose(got[k], v, atol=pos_tol, rtol=0)
    else:
      np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_fixture_round_trips_through_both_commands(tmp_path):
  """The PyTorch fixture -> `convert sit` -> `sit-to-reference`: the same keys and tensors (the
  recomputed pos_embed within 5e-7 of torch's float32 table) and the same config.json."""
  config, sd = fixture_reference()
  cio.save_safetensors(sd, tmp_path / "ref" / "model.safetensors")
  (tmp_path / "ref" / "config.json").write_text(json.dumps(config))
  out = main(["sit", "--weights", str(tmp_path / "ref"), "--out", str(tmp_path / "ours")])
  back = main(
    [
      "sit-to-reference",
      "--checkpoint",
      str(out),
      "--out",
      str(tmp_path / "back" / "m.safetensors"),
    ]
  )
  assert_same_reference(cio.load_state_dict(back), sd)
  assert json.loads((back.parent / "config.json").read_text()) == config
  # and in again: the same params
  again = main(["sit", "--weights", str(back), "--out", str(tmp_path / "again")])  # config beside
  jax.tree.map(
    np.testing.assert_array_equal,
    checkpointing.load_model(again)[0],
    checkpointing.load_model(out)[0],
  )


@pytest.mark.parametrize("hf_config", [HF_SIT, HF_DIT], ids=["sit", "dit"])
def test_hf_folder_converts_and_exports_back(tmp_path, hf_config):
  """A downloaded HF folder (config.json + model.safetensors + card) converts with --weights
  DIR alone; the export writes the same state dict and a config that rebuilds the same model."""
  sd, params = random_reference(hf_config, seed=1)
  folder = hf_folder(tmp_path / "sit-xl_softvq-b-64", hf_config, sd)
  out = main(["sit", "--weights", str(folder), "--out", str(tmp_path / "ours")])
  loaded, cfg = checkpointing.load_model(out)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert cfg["model"]["kind"] == ("dit" if "learn_sigma" in hf_config else "sit")
  back = main(
    [
      "sit-to-reference",
      "--checkpoint",
      str(out),
      "--out",
      str(tmp_path / "back" / "m.safetensors"),
    ]
  )
  assert_same_reference(cio.load_state_dict(back), sd, pos_tol=0)
  assert json.loads((back.parent / "config.json").read_text()) == hf_config


@pytest.mark.parametrize("kind", ["sit", "dit"])
def test_model_built_here_exports_to_a_loadable_reference(tmp_path, kind):
  """A model dir without a reference config (trained or built here): config.json gets the
  reference constructor's fields (DiT: learn_sigma; SiT: no learn_sigma), and converting the
  export back gives the same model and params."""
  model = build_generator(kind, "mu", input_size=16, in_channels=8, num_classes=10)
  rng = np.random.default_rng(2)
  params = jax.tree.map(
    lambda a: rng.normal(size=a.shape).astype(np.float32), sit.abstract_params(model)
  )
  mdir = checkpointing.save_model(tmp_path / "mine", params, {"model": sit.generator_config(model)})
  back = main(["sit-to-reference", "--checkpoint", str(mdir), "--out", str(tmp_path / "r.npz")])
  ref_cfg = json.loads((tmp_path / "config.json").read_text())
  assert ("learn_sigma" in ref_cfg) == (kind == "dit") and ref_cfg["vae_1d"]
  assert sit.model_from_reference_config(ref_cfg) == model
  sd = cio.load_state_dict(back)
  assert set(sd) == {k for _, k, _ in sit.key_map(model)} | {"pos_embed"}
  _, params2 = sit.sit_from_reference(ref_cfg, sd)
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_training_workdir_exports_ema_or_raw_params(setup, tmp_path):  # noqa: F811
  """A SiT training workdir exports directly: its EMA params by default, the raw ones with --raw."""
  root, _, _ = setup
  c = _config(root, steps=2)
  c.eval_every = c.image_every = 1000  # no evaluation or sample grid: only the checkpoint
  workdir = tmp_path / "run"
  loop.train(GeneratorTask, c, str(workdir))
  outs = {}
  for raw in (False, True):
    out = tmp_path / ("raw" if raw else "ema") / "model.safetensors"
    main(["sit-to-reference", "--checkpoint", str(workdir), "--out", str(out)] + ["--raw"] * raw)
    outs[raw] = cio.load_state_dict(out)
    ref_cfg = json.loads((out.parent / "config.json").read_text())
    model, params = sit.sit_from_reference(ref_cfg, outs[raw])
    assert (model.input_size, model.in_channels, model.num_classes) == (8, 4, 4)
  mngr = checkpointing.CheckpointManager(workdir, async_save=False)
  abstract = checkpointing.abstract_like(sit.abstract_params(model))
  for raw in (False, True):
    want = mngr.restore_params(abstract, ema=not raw)
    _, got = sit.sit_from_reference(ref_cfg, outs[raw])
    jax.tree.map(np.testing.assert_array_equal, got, want)
  mngr.close()
  differs = [not np.array_equal(outs[False][k], outs[True][k]) for k in outs[False]]
  assert any(differs)  # EMA and raw params are different trees


def test_export_refuses_what_the_reference_cannot_hold(tmp_path):
  """A SiT with learn_sigma or a DiT with qk_norm has no reference constructor: refused by name."""
  from softvq_jax.utils.errors import UserError

  for kind, kw, name in (
    ("sit", {"learn_sigma": True}, "learn_sigma"),
    ("dit", {"qk_norm": True}, "qk_norm"),
  ):
    model = build_generator(kind, "mu", input_size=16, in_channels=8, num_classes=10, **kw)
    with pytest.raises(UserError, match=name):
      sit.reference_config(model)
  with pytest.raises(UserError, match="neither a generator model dir"):
    main(["sit-to-reference", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.pt")])


def test_torch_output_is_written_with_torch_or_refused_without(tmp_path):
  """`--out model.pt`: a torch state dict when torch is installed, else a one-line refusal that
  points to .safetensors (torch is optional)."""
  from softvq_jax.utils.errors import UserError

  sd, _ = random_reference(HF_SIT, seed=3)
  folder = hf_folder(tmp_path / "hf", HF_SIT, sd)
  out = main(["sit", "--weights", str(folder), "--out", str(tmp_path / "ours")])
  args = ["sit-to-reference", "--checkpoint", str(out), "--out", str(tmp_path / "r" / "m.pt")]
  try:
    import torch
  except ImportError:
    with pytest.raises(UserError, match=r"m\.pt: writing a torch file needs torch.*safetensors"):
      main(args)
    return
  main(args)
  back = {k: v.numpy() for k, v in torch.load(tmp_path / "r" / "m.pt").items()}
  assert_same_reference(back, sd, pos_tol=0)
