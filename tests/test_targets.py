import pytest
import torch

from cfglab.diffusion.schedules import Cosine
from cfglab.diffusion.targets import to_prediction, training_target


@pytest.mark.parametrize("target", ["eps", "v", "x0"])
def test_exact_output_recovers_x0_and_eps(target):
    x0, eps = torch.randn(16, 1, 4, 4, dtype=torch.float64), torch.randn(16, 1, 4, 4, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64)
    alpha, sigma = Cosine().alpha_sigma(t)
    xt = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    pred = to_prediction(training_target(x0, eps, alpha, sigma, target), xt, alpha, sigma, target)
    torch.testing.assert_close(pred.x0, x0)
    torch.testing.assert_close(pred.eps, eps)


def test_unknown_target():
    with pytest.raises(ValueError, match="'score'"):
        training_target(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1), "score")
