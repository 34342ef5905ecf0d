"""Frozen pretrained networks used inside losses (VGG16/LPIPS, DINO, DINOv2).

Their parameters are user-supplied files, never trained: they are passed to the jitted train step
as an argument (not closed over, not in the optimiser state) and wrapped in stop_gradient.
"""
