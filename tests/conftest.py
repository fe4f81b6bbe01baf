"""Shared fixtures: tiny model configs and checkpoints made on the spot (random weights: for mechanics, not quality)."""

import pytest
import torch

from engine.model.configs import ModelConfig

TINY_TEST = dict(height=32, width=32, dim=64, num_heads=2, num_layers=2, ffn_dim=128, control_layers=(0,),
                 vae_dim=8, vae_dec_dim=8, latent_channels=8, num_refs=2)


def tiny_test_config(**overrides) -> ModelConfig:
    return ModelConfig.from_name("tiny", **{**TINY_TEST, **overrides})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint folder of a 32x32 two-layer model with random weights."""
    from engine.model.checkpoint import save_checkpoint
    from engine.model.dit import SpatiaDiT
    from engine.model.vae import VideoVAE

    cfg = tiny_test_config()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-test"
    save_checkpoint(path, cfg, dit=SpatiaDiT(cfg), vae=VideoVAE(cfg))
    return path
