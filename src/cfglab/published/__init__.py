"""Published class-conditional diffusion models (DiT, diffusers' UNet2DModel) as the joint model of evaluate.py and
generate.py, loaded from local files: `published=dit published.path=...` instead of `ckpt_path` (conf/published/)."""
