"""The VAE and DiT training stages on a tiny generated world dataset: samples, augmentation, cache, loss falls."""

import numpy as np
import pytest
import torch

from engine.model.dit import SpatiaDiT
from engine.model.vae import VideoVAE
from engine.train.cache import CachedSamples, build_cache
from engine.train.dit import (DitLossSettings, SampleSettings, SpatiaSamples, apply_history_augmentation, corrupt_history,
                              make_dit_loss)
from engine.train.loop import Trainer, TrainSettings
from engine.train.vae import VaeClips, make_vae_loss, vae_clip_frames
from engine.world.dataset import DatasetConfig, build_dataset
from engine.world.loader import WorldDataset
from tests.conftest import tiny_test_config


@pytest.fixture(scope="module")
def world32(tmp_path_factory):
    root = tmp_path_factory.mktemp("world32")
    build_dataset(DatasetConfig(scenes=2, frames=16, width=32, height=32, fps=16), root, workers=1, progress=False)
    return root


def test_samples_are_built_the_papers_way(world32):
    cfg = tiny_test_config()
    ds = SpatiaSamples(world32, cfg, SampleSettings(min_context=4))
    item = ds[0]
    C, F = cfg.video_channels, 1 + cfg.chunk_frames
    assert item["clip"].shape == (C, F, 32, 32)
    assert item["refs"].shape == (C, cfg.num_refs, 32, 32)
    assert item["scene"].shape == (C, F, 32, 32) and item["coverage"].shape == (1, F, 32, 32)
    # the history frame is in the memory, so its render covers most of it and matches its colours there
    cov = item["coverage"][0, 0] > 0
    assert cov.float().mean() > 0.5
    err = (item["scene"][:3, 0] - item["clip"][:3, 0]).abs().mean(0)[cov]
    assert err.median() < 0.1
    # deterministic per index
    torch.testing.assert_close(ds[0]["scene"], item["scene"])


def test_history_augmentation_stays_in_range_and_touches_only_history():
    cfg = tiny_test_config()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, cfg.latent_channels, 3, 4, 4, generator=gen)
    batch = {"x0": x0, "refs": torch.randn(4, cfg.latent_channels, cfg.num_refs, 4, 4),
             "control": torch.randn(4, 2 * cfg.latent_channels, 3, 4, 4), "sample_seed": torch.arange(4)}
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, refs=None, control=None):
            seen["x"], seen["t"] = x, t
            return torch.zeros(x.shape[0], x.shape[1], cfg.num_refs + x.shape[2], *x.shape[3:]) + self.w

    loss, logs = make_dit_loss(cfg, None)(Spy(), batch)
    assert 0 <= logs["t_aug"] <= 50 / 1000
    fh = cfg.history_latent_frames
    hist_in = seen["x"][:, :, :fh]
    diff = (hist_in - x0[:, :, :fh]).abs()
    assert 0 < diff.max() < 0.5  # a little noise, of at most t_aug = 0.05 weight
    assert (seen["t"][:, :fh] == 0).all()  # the DiT still sees the history as clean, as at inference
    # target tokens are the flow interpolation, not the clean latents
    assert not torch.allclose(seen["x"][:, :, fh:], x0[:, :, fh:])
    t_aug = torch.full((4,), 0.05)
    out = apply_history_augmentation(x0[:, :, :fh], torch.zeros_like(x0[:, :, :fh]), t_aug)
    torch.testing.assert_close(out, 0.95 * x0[:, :, :fh])
    assert logs["targets"] == 2 and seen["x"].shape[2] == 3
    # short chunks: the batch keeps the history and the first target latent, control cut to match
    loss, logs = make_dit_loss(cfg, None, DitLossSettings(short_chunk=1.0))(Spy(), batch)
    assert logs["targets"] == 1 and seen["x"].shape[2] == 2 and torch.isfinite(loss)
    # history corruption changes the history only, and leaves every earlier draw (t, t_aug, noise) as it was
    make_dit_loss(cfg, None)(Spy(), batch)
    plain = seen["x"]
    _, logs = make_dit_loss(cfg, None, DitLossSettings(history_corruption=1.0))(Spy(), batch)
    assert logs["hist_corrupted"] == 1.0
    torch.testing.assert_close(seen["x"][:, :, fh:], plain[:, :, fh:])
    assert (seen["x"][:, :, :fh] - plain[:, :, :fh]).abs().mean() > 0.05


def test_corrupt_history_blurs_and_noises_only_chosen_samples():
    hist = torch.zeros(3, 2, 1, 6, 6)
    hist[:, :, :, 3, 3] = 9.0  # one bright latent pixel
    noise = torch.ones_like(hist)
    out = corrupt_history(hist, noise, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out[0], hist[0])  # level 0: untouched
    torch.testing.assert_close(out[2], noise[2])  # level 1: all noise
    # level 0.5: half a 3x3 blur (the bright pixel spread over its 9 neighbours) plus half the noise
    torch.testing.assert_close(out[1, :, :, 3, 3], torch.full((2, 1), 0.5 * 1.0 + 0.5 * 1.0))
    torch.testing.assert_close(out[1, :, :, 2, 4], torch.full((2, 1), 0.5 * 1.0 + 0.5 * 1.0))
    torch.testing.assert_close(out[1, :, :, 0, 0], torch.full((2, 1), 0.5))


def test_vae_stage_loss_falls(world32, tmp_path):
    cfg = tiny_test_config()
    data = VaeClips(WorldDataset(world32, vae_clip_frames(cfg, 2), step=2), cfg, crop=16)
    assert data[0]["video"].shape == (4, 5, 16, 16)
    torch.manual_seed(0)
    trainer = Trainer(VideoVAE(cfg), make_vae_loss(cfg), data,
                      TrainSettings(steps=60, batch_size=4, lr=2e-3, warmup_steps=5, log_every=10, ckpt_every=1000),
                      tmp_path)
    state = trainer.run(progress=False)
    assert state.history[-1]["loss"] < 0.6 * state.history[0]["loss"]


def test_dit_stage_cache_loss_falls_and_resumes_exactly(world32, tmp_path):
    cfg = tiny_test_config()
    torch.manual_seed(0)
    vae = VideoVAE(cfg)
    samples = SpatiaSamples(world32, cfg, SampleSettings(min_context=4, start_step=1))
    build_cache(samples, vae, cfg, tmp_path / "cache", every=2, batch_size=4, workers=0, progress=False)
    cached = CachedSamples(tmp_path / "cache", cfg)
    assert len(cached) == len(range(0, len(samples), 2))
    # the latents serve any transformer on the same VAE and clip layout, not another VAE or layout
    assert len(CachedSamples(tmp_path / "cache", tiny_test_config(attention_layout="full", num_layers=1)))
    with pytest.raises(ValueError, match="not a DiT sample cache for this model config"):
        CachedSamples(tmp_path / "cache", tiny_test_config(chunk_latent_frames=1))
    settings = dict(steps=40, batch_size=4, lr=1e-3, warmup_steps=5, log_every=5, ckpt_every=10)

    def trainer(out):
        torch.manual_seed(1)
        return Trainer(SpatiaDiT(cfg), make_dit_loss(cfg, vae), cached, TrainSettings(**settings), out)

    a = trainer(tmp_path / "a")
    state = a.run(progress=False)
    assert np.mean([h["loss"] for h in state.history[-2:]]) < 0.8 * state.history[0]["loss"]

    b = trainer(tmp_path / "b")
    b.run(max_steps=15, progress=False)
    b = trainer(tmp_path / "b")
    b.run(progress=False)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_train_command_exports_beside_a_model_card(world32, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what `spatia` sets; restored for the other tests

    from engine.cli import main
    from engine.model.checkpoint import load_checkpoint

    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "MODEL_CARD.md").write_text("card")
    small = dict(height=32, width=32, vae_dim=8, vae_dec_dim=8, latent_channels=8)
    conf = {"stage": "vae", "model": "tiny", "data": str(world32), "out": str(tmp_path / "run"),
            "export": str(dest), "clip_latent_frames": 1, "overrides": small,
            "settings": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "ckpt_every": 2, "log_every": 1}}
    (tmp_path / "vae.json").write_text(json.dumps(conf))
    assert main(["train", "--config", str(tmp_path / "vae.json"), "--quiet", "--threads", "1"]) == 0
    assert (dest / "MODEL_CARD.md").read_text() == "card"  # the export replaces weights, not the folder
    assert load_checkpoint(dest, parts=("vae",)).cfg.latent_channels == 8
    assert (dest / "loss-vae.png").is_file()


def test_control_stage_distils_the_vae_and_exports_the_whole_model(world32, tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file

    from engine.cli import main
    from engine.model.checkpoint import load_checkpoint, save_checkpoint
    from engine.model.control_encoder import ControlEncoder
    from engine.train.control import ControlData, build_control_data, make_control_loss

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    cfg = tiny_test_config()
    torch.manual_seed(0)
    vae = VideoVAE(cfg).eval()
    samples = SpatiaSamples(world32, cfg, SampleSettings(min_context=4, start_step=1))
    build_control_data(samples, vae, cfg, tmp_path / "distil", every=2, batch_size=4, workers=0, progress=False)
    data = ControlData(tmp_path / "distil", cfg)
    assert len(data) == len(range(0, len(samples), 2))
    item = data[1]
    raw = samples[2]
    torch.testing.assert_close(item["scene"][:3], raw["scene"][:3], rtol=0, atol=0.5 / 255)  # stored as uint8
    with torch.no_grad():  # the stored target is the teacher's latents of the stored inputs
        teacher = vae.encode_control(item["scene"][None], item["coverage"][None])[0]
    torch.testing.assert_close(item["target"], teacher, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="not a control distillation data"):
        ControlData(tmp_path / "distil", tiny_test_config(latent_channels=4))

    torch.manual_seed(1)
    trainer = Trainer(ControlEncoder(cfg), make_control_loss(), data,
                      TrainSettings(steps=60, batch_size=4, lr=3e-3, warmup_steps=5, log_every=10, ckpt_every=1000),
                      tmp_path / "run")
    state = trainer.run(progress=False)
    assert state.history[-1]["loss"] < 0.5 * state.history[0]["loss"]
    assert state.history[-1]["rel"] < state.history[0]["rel"]

    # the command: the teacher's DiT and VAE exported unchanged beside the new control encoder
    model = save_checkpoint(tmp_path / "model", cfg, dit=SpatiaDiT(cfg), vae=vae, extra={"stage": "dit"})
    conf = {"stage": "control", "model": "tiny", "data": str(world32), "vae": str(model), "out": str(tmp_path / "cli"),
            "cache": str(tmp_path / "distil"), "cache_every": 2, "export": str(model),
            "samples": {"min_context": 4, "start_step": 1},
            "settings": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "ckpt_every": 2, "log_every": 1}}
    (tmp_path / "control.json").write_text(json.dumps(conf))
    before = {p: load_file(model / p) for p in ("dit.safetensors", "vae.safetensors")}
    assert main(["train", "--config", str(tmp_path / "control.json"), "--quiet", "--threads", "1"]) == 0
    for p, tensors in before.items():  # bit-exact, dtype included
        after = load_file(model / p)
        assert after.keys() == tensors.keys()
        for k, v in tensors.items():
            assert after[k].dtype == v.dtype and torch.equal(after[k], v), (p, k)
    ckpt = load_checkpoint(model)
    assert ckpt.control is not None and ckpt.extra["stage"] == "dit" and ckpt.extra["control"]["step"] == 2
    assert (model / "loss-control.png").is_file()
