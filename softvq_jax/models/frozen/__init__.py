"""Frozen pretrained networks: LPIPS-VGG16, DINO ViT-S/16 (discriminator trunk), DINOv2 teacher."""
