"""The causal video VAE: shapes per preset, causality, streaming == full decode, tiling, depth mapping, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import micro

from engine.model.vae import (
    CausalConv3d,
    VideoVAE,
    depth_to_unit,
    pixel_shuffle,
    pixel_unshuffle,
    temporal_conv,
    unit_to_depth,
)


def _video(cfg, frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(batch, cfg.video_channels, frames, cfg.height, cfg.width, generator=g)
    if cfg.depth_channel:
        v[:, 3] = 0.5 + 20 * v[:, 3]  # metres
    return v


def _randomise(vae: VideoVAE) -> VideoVAE:
    """Give the zero-initialised attention projections weights, so every path is exercised."""
    with torch.no_grad():
        for m in vae.modules():
            if hasattr(m, "proj") and isinstance(m.proj, torch.nn.Conv2d):
                m.proj.weight.normal_(0, 0.1)
    return vae.eval()


@pytest.mark.parametrize("name", ["tiny", "small", "spatia-5b"])
def test_shapes_per_preset(name):
    cfg = micro(name)
    vae = _randomise(VideoVAE(cfg))
    frames = cfg.latent_to_video_frames(3)
    with torch.no_grad():
        dist = vae.encode(_video(cfg, frames, batch=2))
        z = dist.mode()
        assert z.shape == (2, cfg.latent_channels, 3, cfg.latent_height, cfg.latent_width)
        assert dist.sample().shape == z.shape and dist.kl().shape == (2,)
        out = vae.decode(z)
    assert out.shape == (2, cfg.video_channels, frames, cfg.height, cfg.width)
    assert out[:, :3].min() >= 0 and out[:, :3].max() <= 1
    if cfg.depth_channel:
        assert out[:, 3].min() >= cfg.depth_near - 1e-4 and out[:, 3].max() <= cfg.depth_far * 1.001


def test_spatia5b_compression_is_wan22():
    cfg = micro("spatia-5b")
    assert (cfg.spatial_compression, cfg.temporal_compression, cfg.vae_patch) == (16, 4, 2)
    assert cfg.latent_to_video_frames(21) == 81 and cfg.video_to_latent_frames(121) == 31


def test_encoder_is_causal():
    cfg = micro("tiny")
    vae = _randomise(VideoVAE(cfg))
    v = _video(cfg, 9)
    v2 = v.clone()
    v2[:, :, 5:] = torch.rand_like(v2[:, :, 5:])  # change frames of the third latent group only
    with torch.no_grad():
        z, z2 = vae.encode(v).mode(), vae.encode(v2).mode()
    assert torch.equal(z[:, :, :2], z2[:, :, :2])
    assert (z[:, :, 2] - z2[:, :, 2]).abs().max() > 1e-4


def test_decoder_is_causal():
    cfg = micro("tiny")
    vae = _randomise(VideoVAE(cfg))
    z = torch.randn(1, cfg.latent_channels, 3, cfg.latent_height, cfg.latent_width)
    z2 = z.clone()
    z2[:, :, 2] += 1.0
    with torch.no_grad():
        a, b = vae.decode(z), vae.decode(z2)
    assert torch.equal(a[:, :, :5], b[:, :, :5])  # frames of latents 0 and 1
    assert (a[:, :, 5:] - b[:, :, 5:]).abs().max() > 1e-4


def test_chunked_encode_equals_full():
    cfg = micro("spatia-5b")
    vae = _randomise(VideoVAE(cfg))
    v = _video(cfg, 13)
    with torch.no_grad():
        full, chunked = vae.encode(v), vae.encode(v, chunked=True)
    torch.testing.assert_close(chunked.mean, full.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.logvar, full.logvar, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "spatia-5b"])
def test_streaming_decode_equals_full(name):
    cfg = micro(name)
    vae = _randomise(VideoVAE(cfg))
    z = torch.randn(1, cfg.latent_channels, 4, cfg.latent_height, cfg.latent_width)
    with torch.no_grad():
        full = vae.decode(z, postprocess=False)  # model space: metric depth would magnify float rounding
        pieces = list(vae.decode_stream(z, postprocess=False))
    assert [p.shape[2] for p in pieces] == [1, 4, 4, 4]  # the first latent is one frame, then groups of 4
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=1e-5, rtol=1e-5)


def test_streaming_continues_across_calls_with_the_cache():
    cfg = micro("tiny")
    vae = _randomise(VideoVAE(cfg))
    z = torch.randn(1, cfg.latent_channels, 5, cfg.latent_height, cfg.latent_width)
    with torch.no_grad():
        full = vae.decode(z, postprocess=False)
        cache = vae.new_decode_cache()
        first = vae.decode_step(z[:, :, :2], cache, postprocess=False)  # two latent frames, then one by one
        rest = [vae.decode_step(z[:, :, i : i + 1], cache, postprocess=False) for i in range(2, 5)]
    assert cache.frames_in == 5
    torch.testing.assert_close(torch.cat([first, *rest], dim=2), full, atol=1e-5, rtol=1e-5)


def test_tiled_decode():
    cfg = micro("tiny", height=64, width=64)
    vae = _randomise(VideoVAE(cfg))
    z = torch.randn(1, cfg.latent_channels, 2, cfg.latent_height, cfg.latent_width)  # 8x8 latents
    with torch.no_grad():
        full = vae.decode(z, postprocess=False)
        whole_tile = vae.decode(z, tile=cfg.latent_height, postprocess=False)
        tiled = vae.decode(z, tile=4, overlap=2, postprocess=False)
        cache = vae.new_decode_cache(tile=4, overlap=2)
        streamed = torch.cat([vae.decode_step(z[:, :, i : i + 1], cache, False) for i in range(2)], dim=2)
    torch.testing.assert_close(whole_tile, full)
    assert tiled.shape == full.shape
    torch.testing.assert_close(streamed, tiled, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(tiled).all()


def test_temporal_conv_matches_conv3d():
    x = torch.randn(2, 5, 9, 6, 7)
    w = torch.randn(4, 5, 3, 3, 3)
    b = torch.randn(4)
    xt = x.transpose(1, 2)  # the function is time-major
    torch.testing.assert_close(temporal_conv(xt, w, b, 1, (1, 1)).transpose(1, 2), F.conv3d(x, w, b, padding=(0, 1, 1)))
    w1 = torch.randn(4, 5, 3, 1, 1)
    ref = F.conv3d(x, w1, b, stride=(2, 1, 1))
    torch.testing.assert_close(temporal_conv(xt, w1, b, 2, (0, 0)).transpose(1, 2), ref)


def test_causal_conv_pads_only_the_past():
    conv = CausalConv3d(3, 2, 3)
    x = torch.randn(1, 3, 6, 5, 5)
    ref = F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias)  # two zero frames before, none after
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_depth_mapping_round_trip():
    near, far = 0.1, 100.0
    d = torch.tensor([0.1, 0.5, 1.0, 7.3, 100.0])
    u = depth_to_unit(d, near, far)
    assert u[0] == pytest.approx(1.0) and u[-1] == pytest.approx(0.0, abs=1e-7)
    assert torch.all(u[:-1] > u[1:])  # nearer is larger
    torch.testing.assert_close(unit_to_depth(u, near, far), d, rtol=1e-5, atol=1e-6)
    bad = depth_to_unit(torch.tensor([0.0, -1.0, float("inf"), float("nan")]), near, far)
    assert torch.all(bad == 0)  # invalid depth reads as far


def test_pixel_shuffle_inverts_unshuffle():
    x = torch.randn(2, 4, 3, 8, 12)
    assert torch.equal(pixel_shuffle(pixel_unshuffle(x, 2), 2), x)
    # Wan's channel order: c, then the column offset, then the row offset.
    y = pixel_unshuffle(x, 2)
    assert torch.equal(y[:, 1], x[:, 0, :, 1::2, 0::2]) and torch.equal(y[:, 2], x[:, 0, :, 0::2, 1::2])


def test_depth_survives_the_model_space():
    cfg = micro("tiny")
    vae = VideoVAE(cfg)
    v = _video(cfg, 1)
    back = vae.from_model_space(vae.to_model_space(v))
    torch.testing.assert_close(back, v, rtol=1e-4, atol=1e-5)


def test_encode_control_shape():
    cfg = micro("tiny")
    vae = _randomise(VideoVAE(cfg))
    scene = _video(cfg, 5, batch=2)
    mask = (torch.rand(2, 1, 5, cfg.height, cfg.width) > 0.5).float()
    with torch.no_grad():
        ctl = vae.encode_control(scene, mask)
    assert ctl.shape == (2, cfg.control_in_channels, 2, cfg.latent_height, cfg.latent_width)
    with torch.no_grad():
        torch.testing.assert_close(ctl[:, : cfg.latent_channels], vae.encode(scene).mode(), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_named():
    cfg = micro("tiny")
    vae = VideoVAE(cfg)
    with pytest.raises(ValueError, match=r"\[B, 4, F, H, W\]"):
        vae.encode(torch.rand(1, 3, 5, cfg.height, cfg.width))
    with pytest.raises(ValueError, match=r"1 \+ k\*4"):
        vae.encode(_video(cfg, 6))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.randn(1, cfg.latent_channels + 1, 2, 4, 4))


def test_causal_conv_first_frame_alone_uses_the_last_tap_and_leaves_the_zero_padded_state():
    torch.manual_seed(0)
    conv = CausalConv3d(5, 7, 3)
    x0, x1 = torch.randn(2, 5, 1, 6, 6), torch.randn(2, 5, 3, 6, 6)
    padded = F.conv3d(F.pad(torch.cat([x0, x1], 2), (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias)  # zeros before
    state: dict = {}
    first = conv(x0, state)  # the shortcut: one temporal tap
    torch.testing.assert_close(first, padded[:, :, :1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state[conv], torch.cat([torch.zeros_like(x0), x0], 2).transpose(1, 2))
    torch.testing.assert_close(conv(x1, state), padded[:, :, 1:], atol=1e-5, rtol=1e-5)  # streaming on from it
    torch.testing.assert_close(conv(x0), padded[:, :, :1], atol=1e-5, rtol=1e-5)  # without a state too
