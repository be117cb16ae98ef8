"""Face renderer: U-Net levels and shapes, PatchGAN, one optimisation step on CPU."""

import warnings

import pytest
import torch

from singinghead.trainer.models.renderer import (
    CHANNELS,
    PatchDiscriminator,
    RendererWeights,
    UNetGenerator,
    perceptual_loss,
    renderer_step,
    temporal_embedding,
)


def test_unet_has_eight_levels_down_to_2x2():
    gen = UNetGenerator()
    sizes, x = [], torch.zeros(1, 12, 256, 256)
    for layer in gen.down:
        x = layer(x)
        sizes.append((x.shape[1], x.shape[-1]))
    assert sizes == list(zip(CHANNELS, (256, 128, 64, 32, 16, 8, 4, 2), strict=True))
    assert gen(torch.zeros(2, 12, 256, 256)).shape == (2, 3, 256, 256)


def test_temporal_embedding_differs_by_frame():
    e = temporal_embedding(torch.tensor([0, 1, 30]), 8)
    assert e.shape == (3, 8, 8, 8)
    assert not torch.allclose(e[0], e[1]) and torch.allclose(e[0], e[2], atol=1e-5)  # period 30 at the lowest


def test_one_training_step_updates_both_networks():
    torch.manual_seed(0)
    gen, disc = UNetGenerator(), PatchDiscriminator()
    logits, feats = disc(torch.zeros(1, 7, 256, 256))
    assert logits.shape == (1, 1, 30, 30) and len(feats) == 4  # 70×70 patches on 256²
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), 2e-4), torch.optim.Adam(disc.parameters(), 2e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"depth": torch.rand(1, 1, 256, 256, generator=g),
             "reference": torch.rand(1, 3, 256, 256, generator=g) * 2 - 1,
             "target": torch.rand(1, 3, 256, 256, generator=g) * 2 - 1, "frame": torch.tensor([5])}
    before_g = [p.detach().clone() for p in gen.parameters()][:3]
    before_d = [p.detach().clone() for p in disc.parameters()][:3]
    with pytest.warns(UserWarning, match="perceptual loss is disabled"):
        vgg = perceptual_loss(None)
    losses = renderer_step(gen, disc, opt_g, opt_d, batch, RendererWeights(), vgg)
    assert set(losses) == {"d", "g", "gan", "l1", "feature_matching"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before_g, list(gen.parameters())[:3], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, list(disc.parameters())[:3], strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a second step: the losses stay finite
        assert all(v == v for v in renderer_step(gen, disc, opt_g, opt_d, batch, RendererWeights(), None).values())


def test_perceptual_loss_runs_from_vgg19_weights_in_torchvision_format(tmp_path):
    """The weighted path: a (randomly initialised) VGG-19 saved as torchvision saves it is loaded
    by `perceptual_loss`; its loss is 0 for an image against itself, grows with the difference,
    and joins the generator's losses in a training step."""
    from torchvision.models import vgg19

    torch.manual_seed(0)
    weights = tmp_path / "vgg19.pth"
    torch.save(vgg19(weights=None).state_dict(), weights)
    vgg = perceptual_loss(weights)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    noise = torch.randn(1, 3, 64, 64, generator=g)
    assert float(vgg(a, a)) == 0.0
    assert 0 < float(vgg(a, (a + 0.1 * noise).clamp(-1, 1))) < float(vgg(a, (a + 0.5 * noise).clamp(-1, 1)))
    gen, disc = UNetGenerator(channels=(8, 16, 32, 32, 32, 32, 32, 32)), PatchDiscriminator()
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), 2e-4), torch.optim.Adam(disc.parameters(), 2e-4)
    batch = {"depth": torch.rand(1, 1, 256, 256, generator=g),
             "reference": torch.rand(1, 3, 256, 256, generator=g) * 2 - 1,
             "target": torch.rand(1, 3, 256, 256, generator=g) * 2 - 1, "frame": torch.tensor([5])}
    losses = renderer_step(gen, disc, opt_g, opt_d, batch, RendererWeights(), vgg)
    assert losses["perceptual"] > 0 and set(losses) == {"d", "g", "gan", "l1", "feature_matching", "perceptual"}
