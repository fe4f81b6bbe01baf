"""The distilled control encoder: the VAE's contract (shapes, causal streaming, errors) and its loading."""

import pytest
import torch

from engine.model.checkpoint import load_checkpoint, save_checkpoint
from engine.model.control_encoder import ControlEncoder
from engine.model.dit import SpatiaDiT
from engine.model.vae import VideoVAE
from engine.pipeline import WorldModel
from tests.conftest import tiny_test_config


def _inputs(cfg, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scene = torch.rand(1, cfg.video_channels, frames, cfg.height, cfg.width, generator=g)
    scene[:, 3:] *= 20.0  # metric depth
    mask = (torch.rand(1, 1, frames, cfg.height, cfg.width, generator=g) > 0.4).float()
    return scene, mask


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_same_latent_layout_as_the_vae(frames):
    cfg = tiny_test_config()
    torch.manual_seed(0)
    scene, mask = _inputs(cfg, frames)
    with torch.no_grad():
        expected = VideoVAE(cfg).encode_control(scene, mask)
        got = ControlEncoder(cfg).encode_control(scene, mask)
    assert got.shape == expected.shape == (1, 2 * cfg.latent_channels, cfg.video_to_latent_frames(frames),
                                           cfg.latent_height, cfg.latent_width)
    assert torch.isfinite(got).all()


def test_streamed_parts_give_one_pass_and_forks_stay_apart():
    cfg = tiny_test_config()
    torch.manual_seed(0)
    enc = ControlEncoder(cfg).eval()
    scene, mask = _inputs(cfg, 9)
    with torch.no_grad():
        whole = enc.encode_control(scene, mask)
        state: dict = {}
        first = enc.encode_control(scene[:, :, :1], mask[:, :, :1], state)
        fork = dict(state)
        rest = enc.encode_control(scene[:, :, 1:], mask[:, :, 1:], state)
        # the fork continues from the first frame, unaffected by the later part the original state saw
        again = enc.encode_control(scene[:, :, 1:5], mask[:, :, 1:5], fork)
    torch.testing.assert_close(torch.cat([first, rest], 2), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, whole[:, :, 1:2], rtol=1e-5, atol=1e-5)
    # causal: changing the last frame changes only the last latent; a latent also sees the group before its own
    scene2 = scene.clone()
    scene2[:, :, -1] = 0.5
    scene3 = scene.clone()
    scene3[:, :, 1] = 0.5
    with torch.no_grad():
        changed_last = enc.encode_control(scene2, mask)
        changed_early = enc.encode_control(scene3, mask)
    torch.testing.assert_close(changed_last[:, :, :2], whole[:, :, :2])
    assert not torch.allclose(changed_last[:, :, 2], whole[:, :, 2])
    torch.testing.assert_close(changed_early[:, :, 0], whole[:, :, 0])
    assert not torch.allclose(changed_early[:, :, 2], whole[:, :, 2])  # frame 1 is in latent 2's window


def test_bad_inputs_are_refused_with_the_reason():
    cfg = tiny_test_config()
    enc = ControlEncoder(cfg)
    scene, mask = _inputs(cfg, 9)
    with pytest.raises(ValueError, match="1 \\+ k"):
        enc.encode_control(scene[:, :, :4], mask[:, :, :4])
    with pytest.raises(ValueError, match="multiple of"):
        state: dict = {}
        enc.encode_control(scene[:, :, :1], mask[:, :, :1], state)
        enc.encode_control(scene[:, :, 1:4], mask[:, :, 1:4], state)
    with pytest.raises(ValueError, match="mask must be"):
        enc.encode_control(scene, mask[:, :, :5])
    with pytest.raises(ValueError, match="scene must be"):
        enc.encode_control(scene[:, :3], mask)


def test_checkpoint_ships_it_and_the_model_uses_it(tmp_path):
    cfg = tiny_test_config()
    torch.manual_seed(0)
    dit, vae, control = SpatiaDiT(cfg), VideoVAE(cfg), ControlEncoder(cfg)
    with_control = save_checkpoint(tmp_path / "with", cfg, dit=dit, vae=vae, control=control)
    without = save_checkpoint(tmp_path / "without", cfg, dit=dit, vae=vae)
    loaded = load_checkpoint(with_control)
    for (k, v), w in zip(control.state_dict().items(), loaded.control.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    assert load_checkpoint(without).control is None

    scene, mask = _inputs(cfg, 5)
    with torch.no_grad():
        distilled = WorldModel.load(with_control)  # auto: the distilled encoder where shipped
        assert distilled.control is not None
        torch.testing.assert_close(distilled.encode_control(scene, mask), control.eval().encode_control(scene, mask))
        teacher = WorldModel.load(with_control, control_encoder="vae")
        assert teacher.control is None
        torch.testing.assert_close(teacher.encode_control(scene, mask), vae.eval().encode_control(scene, mask))
    assert WorldModel.load(without).control is None
    with pytest.raises(FileNotFoundError, match="no distilled control encoder"):
        WorldModel.load(without, control_encoder="distilled")
    with pytest.raises(ValueError, match="control_encoder must be"):
        WorldModel.load(without, control_encoder="fast")


def test_a_damaged_weights_file_is_named_in_the_error(tmp_path):
    cfg = tiny_test_config()
    path = save_checkpoint(tmp_path / "m", cfg, dit=SpatiaDiT(cfg), vae=VideoVAE(cfg), control=ControlEncoder(cfg))
    data = (path / "control.safetensors").read_bytes()
    (path / "control.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="control.safetensors is not a readable safetensors file"):
        WorldModel.load(path)
    WorldModel.load(path, control_encoder="vae")  # the other parts still load without it
