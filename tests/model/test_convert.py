"""Official-release conversion (Wan2.2 DiT + VACE control branch + LoRA, Wan2.2 VAE) and our own checkpoints.

The official key names and shapes are generated here from the structure of the released modules (Wan2.2's
`WanModel`/`WanAttentionBlock`, VACE's `vace_blocks`, Wan2.2's `Encoder3d`/`Decoder3d`), independently of the
conversion tables, at reduced width and depth."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import micro
from safetensors.torch import save_file

from engine.model.checkpoint import WeightsError, load_checkpoint, load_state_dict_strict, save_checkpoint
from engine.model.convert import (
    dit_official_to_ours,
    dit_ours_to_official,
    load_official,
    load_pretrained,
    read_tensors,
    vae_official_to_ours,
    vae_ours_to_official,
)
from engine.model.dit import SpatiaDiT
from engine.model.lora import inject_lora, lora_parameters
from engine.model.vae import VideoVAE


# --------------------------------------------------------------------------------------------- official names
def official_dit_shapes(cfg) -> dict[str, tuple]:
    d, f, c, p = cfg.dim, cfg.ffn_dim, cfg.latent_channels, cfg.patch
    s: dict[str, tuple] = {}

    def linear(name, dout, din):
        s[f"{name}.weight"], s[f"{name}.bias"] = (dout, din), (dout,)

    def block(prefix):
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                linear(f"{prefix}.{attn}.{proj}", d, d)
            s[f"{prefix}.{attn}.norm_q.weight"] = s[f"{prefix}.{attn}.norm_k.weight"] = (d,)
        s[f"{prefix}.norm3.weight"] = s[f"{prefix}.norm3.bias"] = (d,)
        linear(f"{prefix}.ffn.0", f, d)
        linear(f"{prefix}.ffn.2", d, f)
        s[f"{prefix}.modulation"] = (1, 6, d)

    s["patch_embedding.weight"], s["patch_embedding.bias"] = (d, c, *p), (d,)
    linear("text_embedding.0", d, cfg.text_dim)
    linear("text_embedding.2", d, d)
    linear("time_embedding.0", d, cfg.freq_dim)
    linear("time_embedding.2", d, d)
    linear("time_projection.1", 6 * d, d)
    for i in range(cfg.num_layers):
        block(f"blocks.{i}")
    linear("head.head", math.prod(p) * c, d)
    s["head.modulation"] = (1, 2, d)
    s["vace_patch_embedding.weight"], s["vace_patch_embedding.bias"] = (d, 2 * c, *p), (d,)
    for j in range(len(cfg.control_layers)):
        block(f"vace_blocks.{j}")
        if j == 0:
            linear("vace_blocks.0.before_proj", d, d)
        linear(f"vace_blocks.{j}.after_proj", d, d)
    return s


def official_vae_shapes(cfg) -> dict[str, tuple]:
    z, mult, nres = cfg.latent_channels, cfg.vae_dim_mult, cfg.vae_num_res_blocks
    io = cfg.video_channels * cfg.vae_patch**2
    s: dict[str, tuple] = {}

    def conv(name, dout, din, k):
        s[f"{name}.weight"], s[f"{name}.bias"] = (dout, din, *k), (dout,)

    def resblock(prefix, din, dout):
        s[f"{prefix}.residual.0.gamma"] = (din, 1, 1, 1)
        conv(f"{prefix}.residual.2", dout, din, (3, 3, 3))
        s[f"{prefix}.residual.3.gamma"] = (dout, 1, 1, 1)
        conv(f"{prefix}.residual.6", dout, dout, (3, 3, 3))
        if din != dout:
            conv(f"{prefix}.shortcut", dout, din, (1, 1, 1))

    def middle(prefix, dim):
        resblock(f"{prefix}.middle.0", dim, dim)
        s[f"{prefix}.middle.1.norm.gamma"] = (dim, 1, 1)
        conv(f"{prefix}.middle.1.to_qkv", 3 * dim, dim, (1, 1))
        conv(f"{prefix}.middle.1.proj", dim, dim, (1, 1))
        resblock(f"{prefix}.middle.2", dim, dim)

    enc = [cfg.vae_dim * u for u in (1, *mult)]
    conv("encoder.conv1", enc[0], io, (3, 3, 3))
    for i in range(len(mult)):
        for j in range(nres):
            resblock(f"encoder.downsamples.{i}.downsamples.{j}", enc[i] if j == 0 else enc[i + 1], enc[i + 1])
        if i != len(mult) - 1:
            conv(f"encoder.downsamples.{i}.downsamples.{nres}.resample.1", enc[i + 1], enc[i + 1], (3, 3))
            if cfg.vae_temporal_down[i]:
                conv(f"encoder.downsamples.{i}.downsamples.{nres}.time_conv", enc[i + 1], enc[i + 1], (3, 1, 1))
    middle("encoder", enc[-1])
    s["encoder.head.0.gamma"] = (enc[-1], 1, 1, 1)
    conv("encoder.head.2", 2 * z, enc[-1], (3, 3, 3))
    conv("conv1", 2 * z, 2 * z, (1, 1, 1))
    conv("conv2", z, z, (1, 1, 1))
    dec = [cfg.vae_dec_dim * u for u in (mult[-1], *mult[::-1])]
    t_up = cfg.vae_temporal_down[::-1]
    conv("decoder.conv1", dec[0], z, (3, 3, 3))
    middle("decoder", dec[0])
    for i in range(len(mult)):
        for j in range(nres + 1):
            resblock(f"decoder.upsamples.{i}.upsamples.{j}", dec[i] if j == 0 else dec[i + 1], dec[i + 1])
        if i != len(mult) - 1:
            conv(f"decoder.upsamples.{i}.upsamples.{nres + 1}.resample.1", dec[i + 1], dec[i + 1], (3, 3))
            if t_up[i]:
                conv(f"decoder.upsamples.{i}.upsamples.{nres + 1}.time_conv", 2 * dec[i + 1], dec[i + 1], (3, 1, 1))
    s["decoder.head.0.gamma"] = (dec[-1], 1, 1, 1)
    conv("decoder.head.2", io, dec[-1], (3, 3, 3))
    return s


def _random(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.02 for k, shape in shapes.items()}


@pytest.fixture
def cfg():
    return micro("spatia-5b")  # 8 layers, control at 0 and 4, text, RGB Wan2.2 VAE layout


# --------------------------------------------------------------------------------------------- name tables
def test_official_dit_names_load_with_no_missing_or_unexpected(cfg):
    official = _random(official_dit_shapes(cfg))
    dit = SpatiaDiT(cfg)
    load_state_dict_strict(dit, dit_official_to_ours(official), "official test weights")
    torch.testing.assert_close(dit.blocks[3].ffn.fc1.weight, official["blocks.3.ffn.0.weight"])
    torch.testing.assert_close(dit.control_blocks[1].norm_cross.bias, official["vace_blocks.1.norm3.bias"])
    assert set(dit_ours_to_official(dit.state_dict())) == set(official)


def test_official_vae_names_load_with_no_missing_or_unexpected(cfg):
    official = _random(official_vae_shapes(cfg))
    vae = VideoVAE(cfg)
    load_state_dict_strict(vae, vae_official_to_ours(official, cfg), "official test VAE")
    time_conv = official["encoder.downsamples.1.downsamples.2.time_conv.weight"]  # the resampler after 2 blocks
    torch.testing.assert_close(vae.encoder.downsamples[1].resample.time_conv.weight, time_conv)
    torch.testing.assert_close(vae.decoder.upsamples[0].blocks[2].conv2.bias,
                               official["decoder.upsamples.0.upsamples.2.residual.6.bias"])  # fmt: skip
    assert set(vae_ours_to_official(vae.state_dict(), cfg)) == set(official)


def test_weight_errors_name_the_keys(cfg):
    official = _random(official_dit_shapes(cfg))
    ours = dit_official_to_ours(official)
    del ours["blocks.2.self_attn.k.bias"]
    ours["blocks.0.self_attn.extra.weight"] = torch.zeros(3)
    ours["head.modulation"] = torch.zeros(1, 3, cfg.dim)
    with pytest.raises(WeightsError) as err:
        load_state_dict_strict(SpatiaDiT(cfg), ours, "broken.safetensors")
    msg = str(err.value)
    assert "broken.safetensors" in msg and "blocks.2.self_attn.k.bias" in msg
    assert "blocks.0.self_attn.extra.weight" in msg and f"head.modulation: [1, 3, {cfg.dim}]" in msg


# --------------------------------------------------------------------------------------------- whole release
def _write_release(tmp_path, cfg):
    official = _random(official_dit_shapes(cfg))
    base = {k: v for k, v in official.items() if not k.startswith("vace_")}
    control = {k: v for k, v in official.items() if k.startswith("vace_")}
    shard_dir = tmp_path / "Wan2.2-TI2V-5B"
    shard_dir.mkdir()
    keys = sorted(base)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}  # fmt: skip
    for name, part in halves.items():
        save_file({k: base[k] for k in part}, str(shard_dir / name))
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file(control, str(tmp_path / "control.safetensors"))
    g = torch.Generator().manual_seed(5)
    d, r = cfg.dim, 4
    lora = {  # PEFT names under a prefix, and a kohya pair with an alpha
        "diffusion_model.blocks.1.self_attn.q.lora_A.weight": torch.randn(r, d, generator=g),
        "diffusion_model.blocks.1.self_attn.q.lora_B.weight": torch.randn(d, r, generator=g),
        "diffusion_model.blocks.2.ffn.0.lora_down.weight": torch.randn(r, d, generator=g),
        "diffusion_model.blocks.2.ffn.0.lora_up.weight": torch.randn(cfg.ffn_dim, r, generator=g),
        "diffusion_model.blocks.2.ffn.0.alpha": torch.tensor(2.0),
    }
    save_file(lora, str(tmp_path / "lora.safetensors"))
    vae = _random(official_vae_shapes(cfg), seed=1)
    torch.save(vae, str(tmp_path / "Wan2.2_VAE.pth"))
    return official, lora, vae


def test_load_official_release(tmp_path, cfg):
    official, lora, vae_sd = _write_release(tmp_path, cfg)
    dit, vae = load_official(cfg, dit=tmp_path / "Wan2.2-TI2V-5B", vae=tmp_path / "Wan2.2_VAE.pth",
                             control=tmp_path / "control.safetensors", lora=tmp_path / "lora.safetensors")  # fmt: skip
    p = "diffusion_model.blocks."
    delta_q = lora[p + "1.self_attn.q.lora_B.weight"] @ lora[p + "1.self_attn.q.lora_A.weight"]
    torch.testing.assert_close(dit.blocks[1].self_attn.q.weight, official["blocks.1.self_attn.q.weight"] + delta_q)
    delta_ffn = lora[p + "2.ffn.0.lora_up.weight"] @ lora[p + "2.ffn.0.lora_down.weight"]
    ffn = official["blocks.2.ffn.0.weight"] + 0.5 * delta_ffn
    torch.testing.assert_close(dit.blocks[2].ffn.fc1.weight, ffn)  # alpha / rank = 2 / 4
    torch.testing.assert_close(dit.blocks[1].self_attn.k.weight, official["blocks.1.self_attn.k.weight"])
    torch.testing.assert_close(dit.control_blocks[0].before_proj.weight, official["vace_blocks.0.before_proj.weight"])
    torch.testing.assert_close(vae.decoder.head_conv.weight, vae_sd["decoder.head.2.weight"])
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    with torch.no_grad():
        v = dit(torch.randn(1, c, 2, h, w), torch.tensor([0.5]), refs=torch.randn(1, c, 1, h, w),
                control=torch.randn(1, 2 * c, 2, h, w), text=torch.randn(1, 4, cfg.text_dim))  # fmt: skip
        frames = vae.decode(torch.randn(1, c, 2, h, w))
    assert torch.isfinite(v).all() and frames.shape == (1, 3, 5, cfg.height, cfg.width)


def test_missing_files_and_parts_are_named(tmp_path, cfg):
    _write_release(tmp_path, cfg)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_official(cfg, vae=tmp_path / "nowhere.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .safetensors files in .*empty"):
        read_tensors(tmp_path / "empty", "DiT weights")
    with pytest.raises(ValueError, match="pass control="):
        load_official(cfg, dit=tmp_path / "Wan2.2-TI2V-5B")
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, cfg.dim)}, str(tmp_path / "bad_lora.safetensors"))
    with pytest.raises(WeightsError, match="lora_B"):
        load_official(cfg, dit=tmp_path / "Wan2.2-TI2V-5B", control=tmp_path / "control.safetensors",
                      lora=tmp_path / "bad_lora.safetensors")  # fmt: skip


# --------------------------------------------------------------------------------------------- own checkpoints
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, dtype):
    cfg = micro("tiny")
    dit, vae = SpatiaDiT(cfg).to(dtype), VideoVAE(cfg).to(dtype)
    path = save_checkpoint(tmp_path / "ckpt", cfg, dit=dit, vae=vae, extra={"step": 12})
    ckpt = load_checkpoint(path)
    assert ckpt.cfg == cfg and ckpt.extra == {"step": 12}
    for mine, theirs in ((dit, ckpt.dit), (vae, ckpt.vae)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    dit2, vae2 = load_pretrained(path)
    assert torch.equal(dit2.head.proj.weight, dit.head.proj.weight)


def test_checkpoint_keeps_unmerged_lora(tmp_path):
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg)
    inject_lora(dit, rank=2, alpha=4)
    with torch.no_grad():
        for p in lora_parameters(dit):
            p.normal_()
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "c", cfg, dit=dit))
    assert ckpt.vae is None
    assert torch.equal(ckpt.dit.blocks[1].ffn.fc2.lora_B, dit.blocks[1].ffn.fc2.lora_B)
    assert ckpt.dit.blocks[1].ffn.fc2.alpha == 4


def test_checkpoint_errors(tmp_path):
    cfg = micro("tiny")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "c", cfg, dit=SpatiaDiT(cfg))
    sd = SpatiaDiT(cfg).state_dict()
    del sd["blocks.0.ffn.fc1.bias"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "dit.safetensors"))
    with pytest.raises(WeightsError, match="blocks.0.ffn.fc1.bias"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="at least one"):
        save_checkpoint(tmp_path / "d", cfg)
