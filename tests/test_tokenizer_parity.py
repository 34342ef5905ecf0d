"""Parity with the reference PyTorch SoftVQModel on the fixtures (fp32, CPU), SPEC §5.

Tolerances (absolute): encoder tokens, z_e, logits, dec_in 1e-5; probabilities and z_q 1e-5/tau;
images 1e-4; the train-mode entropy loss 1e-6 (relative 1e-5). Indices must be identical.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.weights import tokenizer_from_reference

FIXTURES = ["softvq_small", "softvq_small_rope"]
FIXTURES_DIR = pathlib.Path(__file__).parent / "fixtures"


def load_fixture(fixtures_dir, name):
  config = json.loads((fixtures_dir / f"{name}.config.json").read_text())
  with np.load(fixtures_dir / f"{name}.npz") as data:
    sd = {k[len("param/") :]: data[k] for k in data.files if k.startswith("param/")}
    io = {k[len("io/") :]: data[k] for k in data.files if k.startswith("io/")}
  return config, sd, io


@pytest.fixture(scope="module", params=FIXTURES)
def outputs(request):
  config, sd, io = load_fixture(FIXTURES_DIR, request.param)
  model, params = tokenizer_from_reference(config, sd)
  x = jnp.asarray(io["x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC

  def run(p, x, z):
    v = {"params": p}
    enc = model.apply(v, x, method=lambda m, x: m.encoder(x))
    z_q, info = model.apply(v, x, method=model.encode)
    dec_in = model.apply(v, z_q, method=lambda m, z: m.post_quant_conv(z))
    rec = model.apply(v, z_q, method=model.decode)
    rec_fwd, _ = model.apply(v, x)
    _, train_info = model.apply(v, z, True, method=lambda m, z, t: m.quantize(z, t))
    return enc, info, dec_in, rec, rec_fwd, train_info["entropy_loss"]

  out = jax.jit(run)(params, x, jnp.asarray(io["z"]))
  tau = config["model_args"]["tau"]
  return dict(zip(["enc", "info", "dec_in", "rec", "rec_fwd", "entropy"], out)), io, tau


def test_encoder_and_latents(outputs):
  out, io, tau = outputs
  np.testing.assert_allclose(out["enc"], io["enc_tokens"], atol=1e-5)
  np.testing.assert_allclose(out["info"]["z_e"], io["z"], atol=1e-5)
  np.testing.assert_allclose(out["info"]["logits"], io["logits"], atol=1e-5)
  np.testing.assert_allclose(out["info"]["probs"], io["probs"], atol=1e-5 / tau)
  np.testing.assert_allclose(out["info"]["z_q"], io["z_q"], atol=1e-5 / tau)
  np.testing.assert_array_equal(out["info"]["indices"], io["indices"])  # correct (B, L) order


def test_reference_scalar_diagnostics(outputs):
  out, io, _ = outputs
  m = out["info"]["metrics"]
  np.testing.assert_allclose(m["max_prob"], io["ref_max_probs"], atol=1e-5)
  np.testing.assert_allclose(m["zq_z_cos"], io["ref_zq_z_cos"], atol=1e-5)


def test_decoder(outputs):
  out, io, _ = outputs
  np.testing.assert_allclose(out["dec_in"], io["dec_in"], atol=1e-5)
  rec = io["rec"].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(out["rec"], rec, atol=1e-4)
  np.testing.assert_allclose(out["rec_fwd"], io["rec_forward"].transpose(0, 2, 3, 1), atol=1e-4)


def test_train_entropy_loss(outputs):
  out, io, _ = outputs
  np.testing.assert_allclose(out["entropy"], io["train_entropy_loss"], rtol=1e-5, atol=1e-6)
