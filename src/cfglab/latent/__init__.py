"""Latent spaces a diffusion model can train and sample in (a VAE's), and the encoding of a data set into one."""
