import pytest
import torch

from cfglab.models.unet import UNet


def test_shapes_and_null_label():
    net = UNet(image_size=8, in_channels=1, num_classes=10, base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    assert net.label_emb.num_embeddings == 11  # ten classes and the null token
    x = torch.randn(4, 1, 8, 8)
    out = net(x, torch.rand(4), torch.tensor([0, 3, 9, 10]))
    assert out.shape == x.shape


def test_label_changes_output_after_training_step():
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, num_classes=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, t = torch.randn(6, 1, 8, 8), torch.rand(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):  # zero-initialised output layers: the label reaches the output after a few steps
        opt.zero_grad()
        (net(x, t, y) - x).pow(2).mean().backward()
        opt.step()
    out = net(x[:1].repeat(3, 1, 1, 1), t[:1].repeat(3), torch.tensor([0, 1, 3]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])


def test_incompatible_image_size():
    with pytest.raises(ValueError, match="image_size=30"):
        UNet(image_size=30, in_channels=1, num_classes=10, channel_mult=(1, 2, 2))
