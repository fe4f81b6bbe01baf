"""Tiny-size versions of every preset for the model tests (same structure, a fraction of the width and depth)."""

from __future__ import annotations

import pytest
import torch

from engine.model.configs import ModelConfig


def micro(name: str = "tiny", **overrides) -> ModelConfig:
    """The preset `name` shrunk to test size: 32x32 frames, narrow and shallow, structure kept."""
    small_vae = dict(vae_dim=8, vae_dec_dim=8, latent_channels=8, latent_mean=None, latent_std=None)
    shrink = {
        "tiny": dict(height=32, width=32, vae_dim=8, vae_dec_dim=4, latent_channels=8, dim=64, num_heads=2,
                     num_layers=4, ffn_dim=128, control_layers=(0, 2), num_refs=2),
        "small": dict(height=32, width=32, **small_vae, dim=64, num_heads=2, num_layers=4, ffn_dim=128,
                      control_layers=(0, 2), num_refs=2),
        # spatia-5b keeps its 16x/4x VAE, text cross-attention and "control every 4th layer" layout.
        "spatia-5b": dict(height=32, width=64, **small_vae, dim=96, num_heads=4, num_layers=8, ffn_dim=160,
                          text_dim=32, text_len=7, control_layers=(0, 4), num_refs=3),
    }[name]  # fmt: skip
    shrink.update(overrides)
    return ModelConfig.from_name(name, **shrink)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
