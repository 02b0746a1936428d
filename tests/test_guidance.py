import pytest
import torch

from cfglab.diffusion.denoiser import GuidedDenoiser
from cfglab.diffusion.guidance import CFG, guide
from helpers import Recorder
from cfglab.diffusion.schedules import Cosine


def test_w_zero_is_conditional():
    c, u = torch.randn(8, 3), torch.randn(8, 3)
    torch.testing.assert_close(guide(c, u, 0.0), c)


def test_linear_in_w_and_paper_form():
    c, u = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    for w in [0.1, 1.0, 3.0, 7.5]:
        torch.testing.assert_close(guide(c, u, w), (1 + w) * c - w * u)
        # s = 1 + w convention of DiT / k-diffusion / diffusers
        torch.testing.assert_close(guide(c, u, w), u + (1 + w) * (c - u))
    g0, g1, g3 = guide(c, u, 0.0), guide(c, u, 1.0), guide(c, u, 3.0)
    torch.testing.assert_close(g3 - g1, 2 * (g1 - g0))  # equal steps in w give equal steps in the output


def test_per_sample_w_broadcasts():
    c, u = torch.randn(4, 2), torch.randn(4, 2)
    w = torch.tensor([0.0, 1.0, 2.0, 3.0])[:, None]
    out = guide(c, u, w)
    for i in range(4):
        torch.testing.assert_close(out[i], guide(c[i], u[i], float(w[i])))


@pytest.mark.parametrize("w", [-0.5, float("nan")])
def test_negative_w_rejected(w):
    with pytest.raises(ValueError, match="w="):
        CFG().check_w(w)


def make(w, batched=True):
    net = Recorder()
    return net, GuidedDenoiser(net, Cosine(), CFG(), w, null_label=10, target="eps", batched=batched)


def test_batched_equals_separate_passes_and_counts_nfe():
    x, t, y = torch.randn(5, 3), 0.4, torch.arange(5)
    net_b, den_b = make(2.0, batched=True)
    net_s, den_s = make(2.0, batched=False)
    pb, ps = den_b(x, t, y), den_s(x, t, y)
    torch.testing.assert_close(pb.eps, ps.eps)
    torch.testing.assert_close(pb.x0, ps.x0)
    assert [len(c) for c in net_b.calls] == [10] and [len(c) for c in net_s.calls] == [5, 5]
    assert den_b.nfe == den_s.nfe == 2
    assert (net_b.calls[0][5:] == 10).all()  # second half of the 2B batch carries the null label


def test_guided_output_matches_formula():
    x, t, y = torch.randn(5, 3), 0.4, torch.arange(5)
    net, den = make(3.0)
    tt = torch.full((5,), t)
    eps_c, eps_u = net(x, tt, y), net(x, tt, torch.full_like(y, 10))
    torch.testing.assert_close(den(x, t, y).eps, guide(eps_c, eps_u, 3.0))


def test_w_zero_and_unconditional_skip_the_second_forward():
    x, t, y = torch.randn(5, 3), 0.4, torch.arange(5)
    net, den = make(0.0)
    den(x, t, y)
    assert den.nfe == 1 and len(net.calls) == 1 and (net.calls[0] == y).all()
    net, den = make(3.0)
    den(x, t, None)
    assert den.nfe == 1 and (net.calls[0] == 10).all()
