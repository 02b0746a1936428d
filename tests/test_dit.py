"""The Diffusion Transformer against Peebles & Xie 2023: sizes of Table 1, adaLN-Zero, patch layout, and the
training modes (gradient checkpointing, bf16 autocast, torch.compile, a guidance-distilled student's w input)."""

import pytest
import torch

from cfglab.models.dit import DiT


def tiny(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(8, 4, 10, variant=None, **{"depth": 2, "hidden_size": 32, "num_heads": 2, "patch_size": 2, **kw})


def perturbed(net: DiT) -> DiT:
    """The network with every weight moved off its initialisation (adaLN-Zero starts at an all-zero output)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def inputs(b=3):
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 4, 8, 8, generator=g), torch.rand(b, generator=g), torch.tensor([0, 10, 3])[:b]


@pytest.mark.parametrize("variant, millions", [("S/2", 33), ("B/2", 130), ("L/2", 458), ("XL/2", 675)])
def test_parameter_counts_are_table_1s(variant, millions):
    """Peebles & Xie 2023, Table 4 (32x32x4 latents); their output layer also has the learned variance's
    p * p * 4 outputs, 0.04 % of DiT-XL/2, which cfglab's MSE-trained network does without."""
    with torch.device("meta"):
        net = DiT(32, 4, 1000, variant)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6) == millions


def test_outputs_zeros_at_initialisation_and_not_after_training_moves_the_weights():
    net = tiny()
    x, t, y = inputs()
    assert torch.equal(net(x, t, y), torch.zeros_like(x))
    assert perturbed(net)(x, t, y).abs().min() > 0


def test_patchify_round_trips_and_is_the_layout_of_the_patch_embedding():
    net = perturbed(tiny())
    x = inputs()[0]
    tokens = net.patchify(x)
    assert tokens.shape == (3, 16, 2 * 2 * 4)
    assert torch.equal(net.unpatchify(tokens), x)
    # The strided convolution is a linear map of each patch: its weight flattened in patchify's (p, p, C) order.
    proj = net.x_embedder.proj
    weight = proj.weight.permute(0, 2, 3, 1).reshape(proj.out_channels, -1)
    expected = tokens @ weight.T + proj.bias
    assert torch.allclose(proj(x).flatten(2).transpose(1, 2), expected, atol=1e-5)


def test_the_null_label_is_the_last_embedding_row_and_changes_the_output():
    net = perturbed(tiny())
    x, t, _ = inputs(2)
    assert net.y_embedder.embedding_table.num_embeddings == 11
    assert not torch.allclose(net(x, t, torch.tensor([3, 3])), net(x, t, torch.tensor([10, 10])))


def test_train_mode_drops_no_labels():
    """Label dropout is the LightningModule's: in train mode the network gives what it gives in eval mode."""
    net = perturbed(tiny())
    x, t, y = inputs()
    assert torch.equal(net.train()(x, t, y), net.eval()(x, t, y))


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, y = inputs()
    grads = []
    for ckpt in (False, True):
        net = perturbed(tiny(grad_checkpointing=ckpt)).train()
        net(x, t, y).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_bf16_autocast_is_close_to_float32():
    net = perturbed(tiny())
    x, t, y = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, t, y)
    high = net(x, t, y)
    assert low.dtype == torch.bfloat16
    assert (low.float() - high).abs().max() < 0.05 * high.abs().max()


def test_a_guidance_distilled_dit_takes_w_and_starts_as_the_joint_model():
    joint = perturbed(tiny())
    student = tiny(guidance_range=[0, 4])
    missing, unexpected = student.load_state_dict(joint.state_dict(), strict=False)
    assert all(k.startswith("guidance_emb.") for k in missing) and not unexpected
    x, t, y = inputs()
    assert student.guidance_range == (0.0, 4.0)
    assert torch.equal(student(x, t, y, torch.tensor([0.0, 1.0, 4.0])), joint(x, t, y))
    with pytest.raises(ValueError, match="needs w"):
        student(x, t, y)


@pytest.mark.parametrize("kw, match", [({"variant": "M/2"}, "model.variant='M/2'"),
                                       ({"variant": "B/3"}, "model.variant='B/3'"),
                                       ({"variant": None}, "model.variant=null needs"),
                                       ({"patch_size": 3}, "not divisible by patch_size=3")])
def test_bad_shapes_are_refused_naming_the_setting(kw, match):
    args = {"variant": None, "depth": 2, "hidden_size": 32, "num_heads": 2, "patch_size": 2}
    if kw.get("variant", None) is not None or kw == {"variant": None}:
        args = {}
    with pytest.raises(ValueError, match=match):
        DiT(8, 4, 10, **{**args, **kw})


@pytest.mark.slow
def test_torch_compile_gives_the_eager_output():
    net = perturbed(tiny()).eval()
    x, t, y = inputs()
    eager = net(x, t, y)
    compiled = torch.compile(net)
    assert torch.allclose(compiled(x, t, y), eager, atol=1e-5)
