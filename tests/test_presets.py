"""The cluster presets pass the configuration check on a CPU with fake data folders (nothing is trained)."""

import numpy as np
import pytest
from PIL import Image

from cfglab.config_checks import ConfigError, check_train_config
from helpers import composed, save_vae

ON_CPU = ["trainer.accelerator=cpu"]  # the presets' trainer is the GPU's


@pytest.fixture
def inception(tmp_path):
    path = tmp_path / "inception.pth"
    path.write_bytes(b"not read by the check")  # the check asks that the file exists; the sweep loads it
    return f"metrics.weights_path={path}"


def test_imagenet256_dit_passes_the_check_with_a_fake_image_folder(tmp_path, inception):
    rng = np.random.default_rng(0)
    for i in range(40):
        cls = tmp_path / "train" / f"n{i % 4:08d}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(cls / f"{i}.JPEG")
    base = ["experiment=imagenet256_dit", f"data.data_dir={tmp_path / 'train'}", inception, *ON_CPU,
            f"data.latent.pretrained={save_vae(tmp_path / 'vae', 0)}", f"data.store_root={tmp_path / 'stores'}"]
    cfg = composed("config", base, tmp_path / "run")
    assert (cfg.model.variant, cfg.data.image_size, cfg.module.lr, cfg.callbacks.ema.decay) == ("B/2", 256, 1e-4, 0.9999)
    assert cfg.sampler._target_.endswith("DPMSolverPP2M") and cfg.trainer.precision == "auto"
    check_train_config(cfg)
    check_train_config(composed("config", base + ["model.variant=XL/2"], tmp_path / "run"))
    with pytest.raises(ConfigError, match="model.variant='XL/3'"):
        check_train_config(composed("config", base + ["model.variant=XL/3"], tmp_path / "run"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "stores").exists()


def test_imagenet64_adm_passes_the_check_with_fake_npz_batches(tmp_path, inception):
    data = tmp_path / "imagenet64"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data / "train_data_batch_1.npz", data=rng.integers(0, 256, (300, 12288), dtype=np.uint8),
             labels=rng.integers(1, 1001, 300))
    cfg = composed("config", ["experiment=imagenet64_adm", f"data.data_dir={data}", inception, *ON_CPU,
                              f"data.store_root={tmp_path / 'stores'}"], tmp_path / "run")
    assert (cfg.model.base_channels, list(cfg.model.channel_mult), cfg.model.num_res_blocks) == (192, [1, 2, 3, 4], 3)
    assert cfg.schedule._target_.endswith("PaperLogSNR") and cfg.sampler.steps == 256
    check_train_config(cfg)
    assert not (tmp_path / "run").exists()
