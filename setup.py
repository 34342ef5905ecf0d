"""softvq_jax: SoftVQ-VAE 1-D tokenizers and SiT/DiT generators in JAX/Flax."""
import pathlib

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent
_REQUIREMENTS = [
    line.strip()
    for line in (_HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="softvq_jax",
    version="0.1.0",
    description="SoftVQ-VAE (arXiv 2412.10958) tokenizers and SiT/DiT generators in JAX/Flax, TPU-first.",
    long_description=(_HERE / "README.md").read_text() if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["softvq_jax", "softvq_jax.*"]),
    install_requires=_REQUIREMENTS,
    extras_require={
        "test": [
            "pytest>=8", "pytest-xdist>=3.6", "chex>=0.1.90", "hypothesis>=6.100", "ruff>=0.6",
            # tests/test_colab_notebook.py runs the Colab notebook headless.
            "nbclient", "nbformat", "ipykernel",
        ],
        # Reading .pth files (torch pickles) is optional; safetensors needs no torch.
        "torch": ["torch"],
    },
)
