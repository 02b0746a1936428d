import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    """A cache folder ($CFGLAB_CACHE) shared by the test runs on the bundled digits: their store, domain classifier
    and reference features are made here once per test session (the classifier trains for 1,000 steps) instead of
    once in every test's own folder. Tests of the caching itself keep their own folders."""
    from hydra.utils import instantiate

    from helpers import composed

    cache = tmp_path_factory.mktemp("digits-cache")
    before = os.environ.get("CFGLAB_CACHE")
    os.environ["CFGLAB_CACHE"] = str(cache)
    try:
        cfg = composed("config", [], tmp_path_factory.mktemp("digits-cache-run"))
        data = instantiate(cfg.data)
        data.prepare_data()
        data.setup("fit")
        instantiate(cfg.metrics)(datamodule=data)
    finally:
        if before is None:
            os.environ.pop("CFGLAB_CACHE")
        else:
            os.environ["CFGLAB_CACHE"] = before
    return cache
