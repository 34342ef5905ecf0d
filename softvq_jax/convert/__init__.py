"""Converters between the reference (PyTorch/timm/safetensors) layouts and Flax parameters."""
