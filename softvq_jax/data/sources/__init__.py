"""Image sources behind the one pipeline contract: bundled photos, folders, TFDS ImageNet."""
