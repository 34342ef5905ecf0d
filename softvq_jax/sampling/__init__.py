"""Generator sampling and losses: interpolants (transport.py), ODE/SDE samplers (ode.py, sde.py),
classifier-free guidance (cfg.py), DiT Gaussian diffusion (diffusion.py) and the image generation
pipeline (generate.py: noise -> sampler with CFG -> de-normalise -> tokenizer decode -> uint8).
"""
