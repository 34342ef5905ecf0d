"""Pure loss functions: reconstruction, perceptual (LPIPS), adversarial (+ LeCam, CR, DiffAugment),
alignment, the whole tokenizer objective (tokenizer.py), transport (SiT) and diffusion (DiT)."""
