"""SoftVQ-L tokenizer: the paper's recipe (SPEC §1.3–1.4), ImageNet-1k, 50 epochs at batch 256.

Arguments after the colon: tokens=32|64 (default 64), res=256|512 (default 256), quick (a tiny
model on the bundled photos that trains on CPU in minutes). Examples:
  python -m softvq_jax.main --config=configs/tokenizer_l.py --workdir=runs/softvq_l64
  python -m softvq_jax.main --config=configs/tokenizer_l.py:tokens=32,res=512 --workdir=runs/x
  python -m softvq_jax.main --config=configs/tokenizer_l.py:quick --workdir=runs/quick
"""

from softvq_jax.config.defaults import tokenizer_config


def get_config(arg=None):
  return tokenizer_config("L", arg)
