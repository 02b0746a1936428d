"""The floating-point operations of one network forward, counted by torch's FlopCounterMode."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(net: nn.Module) -> int:
    """FLOPs of one forward of one sample of a cfglab network (`sample_shape`; a guidance-distilled network at
    its lowest w) at t = 0.5 with the null label, counted in eval mode without gradients (matrix products and
    convolutions, 2 FLOPs per multiply-add, as torch counts them). The network's `forward` is called directly, so a
    network compiled in place is not compiled again for a batch of one; its mode is restored."""
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, *net.sample_shape, device=device)
    t, labels = torch.full((1,), 0.5, device=device), torch.zeros(1, dtype=torch.long, device=device)
    w_range = getattr(net, "guidance_range", None)
    w = () if w_range is None else (torch.full((1,), float(w_range[0]), device=device),)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net.forward(x, t, labels, *w)
    finally:
        net.train(was_training)
    return int(counter.get_total_flops())
