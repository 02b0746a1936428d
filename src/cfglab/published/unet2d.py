"""diffusers' class-conditional UNet2DModel (a folder written by save_pretrained: the model's own, or a pipeline's with
unet/ and scheduler/), run by diffusers itself in pixel space.

A UNet2DModel is class-conditional through `num_class_embeds` (class_embed_type null); its last row is taken as the
null class of classifier-free guidance (the classes then being 0 ... num_class_embeds - 2), as DiT's and cfglab's
own tables put it. Its output holds a learned variance when it has twice the
input's channels (ADM's convention). The schedule and prediction target are the pipeline's scheduler's; DDPM's
1000 linear betas and eps for a folder without one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from cfglab.diffusion.schedules import DiscreteLinearBeta
from cfglab.published.dit import read_schedule
from cfglab.published.model import IndexedNet, PublishedModel


class PublishedUNet2D(PublishedModel):
    """conf/published/unet2d.yaml. path: the model's folder or a pipeline's; data: the reference images' settings (see PublishedModel). Samples are images in [-1, 1],
    their x0 estimates clipped there (clip_sample of diffusers' DDPM and DDIM schedulers, clip_denoised of ADM)."""

    data_range = 1.0

    def __init__(self, path: str, data: Optional[dict] = None):
        self.path = Path(str(path)).expanduser()
        pipeline = (self.path / "unet" / "config.json").is_file()
        self._folder = self.path / "unet" if pipeline else self.path
        file = self._folder / "config.json"
        config = json.loads(file.read_text()) if file.is_file() else {}
        if config.get("_class_name") != "UNet2DModel":
            raise ValueError(f"published.path={str(path)!r}: {file} is not the config of a diffusers UNet2DModel")
        rows = config.get("num_class_embeds")
        if not rows or config.get("class_embed_type") is not None:
            raise ValueError(f"published.path={str(path)!r}: {file} is not class-conditional through num_class_embeds "
                             f"(num_class_embeds={rows}, class_embed_type={config.get('class_embed_type')!r})")
        self.num_classes = self.null_label = rows - 1
        self.name = self.path.name
        self.in_channels, size = int(config.get("in_channels", 3)), config.get("sample_size")
        self.size = size if isinstance(size, int) else int(size[0])
        self.learned_variance = int(config.get("out_channels", self.in_channels)) == 2 * self.in_channels
        if pipeline and (self.path / "scheduler").is_dir():
            schedule, self.target = read_schedule(self.path / "scheduler", "published.path")
        else:
            schedule, self.target = DiscreteLinearBeta(), "eps"
        super().__init__(schedule, data)
        self.config["data"] = {**self.config["data"], "image_size": self.size}

    def load_net(self) -> IndexedNet:
        from diffusers import UNet2DModel

        inner = UNet2DModel.from_pretrained(self._folder, low_cpu_mem_usage=False)
        return IndexedNet(inner, self._schedule, (self.in_channels, self.size, self.size), self.learned_variance,
                          diffusers=True, name=self.name)
