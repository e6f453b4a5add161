"""Adapters to other libraries: diffusers pipelines (`attach`) and VAE encoding (`encode_images`)."""
