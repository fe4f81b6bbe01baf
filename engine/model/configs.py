"""Model settings: one dataclass for the VAE, the DiT with its control branch, the sampler defaults and the clip layout.

Every other module of `engine.model` reads its sizes from a `ModelConfig`; nothing downstream hard-codes a token
count, a frame group or a channel number. Derived quantities (compression factors, latent grid, tokens per frame,
frames per chunk, ...) are computed once in `__post_init__` (gpt-fast `ModelArgs` style). Presets:

- `tiny`: the shipped default, real time on two CPU cores at 128x128 RGB-D (see `spatia bench model`).
- `small`: a GPU-sized model at 256x256 RGB-D.
- `spatia-5b`: the paper's sizes (Wan2.2-TI2V-5B DiT and VAE plus 8 VACE-style control blocks), RGB only,
  loadable from the official release through `engine.model.convert`.

    cfg = ModelConfig.from_name("tiny")                       # a preset
    cfg = ModelConfig.from_name("spatia-5b", num_layers=2)    # a preset with overrides (derived fields recomputed)
    cfg = ModelConfig.from_dict(json.load(f))                 # round trip of `cfg.to_dict()`
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SOLVERS = ("euler", "dpmpp_2m")
ACTIVATIONS = ("gelu", "gelu_tanh")
ATTENTION_LAYOUTS = ("full", "context", "layered")
CACHED_LAYOUTS = ("context", "layered")  # the context's keys/values are computed once per chunk (ContextCache)
CFG_DROPS = ("text", "refs", "text+refs")

# Per-channel statistics of the Wan2.2 VAE latents (from the official release); latents are normalised as
# (mu - mean) / std before the DiT sees them.
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


@dataclass
class ModelConfig:
    name: str = "custom"

    # ---- video
    height: int = 128
    width: int = 128
    fps: float = 16.0  # frame rate of the training video, so the rate generated video plays at
    depth_channel: bool = True  # RGB-D in and out of the VAE (the tiny/small models generate depth with frames)
    depth_near: float = 0.1  # metres; depth is encoded as normalised inverse depth between near and far
    depth_far: float = 100.0

    # ---- VAE (Wan2.2 layout, generalised: per level, spatial and temporal downsampling are separate flags)
    vae_patch: int = 4  # pixel (un)shuffle factor at the VAE's input and output (Wan2.2: 2)
    vae_dim: int = 32  # encoder base width
    vae_dec_dim: int = 16  # decoder base width
    vae_dim_mult: tuple[int, ...] = (1, 2, 2)
    vae_num_res_blocks: int = 1  # encoder residual blocks per level; the decoder uses one more (as Wan)
    vae_spatial_down: tuple[bool, ...] = (True, False)  # one flag per level transition (len(dim_mult) - 1)
    vae_temporal_down: tuple[bool, ...] = (True, True)
    latent_channels: int = 16
    latent_mean: tuple[float, ...] | None = None  # per-channel latent statistics; None = 0 mean, unit std
    latent_std: tuple[float, ...] | None = None

    # ---- DiT (Wan2.2 block layout)
    dim: int = 256
    num_heads: int = 4
    num_layers: int = 6
    ffn_dim: int = 1024
    act: str = "gelu"  # FFN / text-embedder activation: "gelu" (erf) or "gelu_tanh" (Wan's; ~10x slower on CPU)
    freq_dim: int = 256  # sinusoidal timestep features
    patch: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch of the latent video
    text_dim: int | None = None  # None: no text cross-attention
    text_len: int = 512  # text tokens the text encoder pads to
    eps: float = 1e-6
    rope_theta: float = 10000.0
    num_train_timesteps: int = 1000  # the timestep embedding sees sigma * num_train_timesteps

    # ---- control branch (VACE-style)
    control_layers: tuple[int, ...] = (0, 2, 4)  # main layers paired with a control block
    control_scale: float = 1.0
    # the distilled control encoder (engine.model.control_encoder), used when a checkpoint ships one
    control_encoder_dim: int = 32  # per-frame width at vae_patch resolution (twice that on the latent grid)
    control_encoder_group_dim: int = 96  # width of the per-latent-frame head

    # ---- attention layout over [references | history | target] tokens
    # "full": every token attends to every token (the paper). "context": references and history (the clean
    # context) attend only to each other, targets to everything, so the context's keys/values are computed once
    # per chunk and reused by every sampler step (`engine.model.dit.ContextCache`). "layered": as "context", and the
    # references attend only to each other, so their keys/values are reused by later chunks with the same references.
    attention_layout: str = "full"

    # ---- clip layout: tokens are [references | history | target] along time
    num_refs: int = 3  # at most this many reference frames (each encoded alone: one latent frame)
    history_latent_frames: int = 1
    chunk_latent_frames: int = 2  # new (target) latent frames per generated chunk

    # ---- sampler defaults
    sample_steps: int = 4
    sample_shift: float = 3.0
    sample_solver: str = "dpmpp_2m"
    cfg_scale: float = 1.0  # 1.0 disables classifier-free guidance (one forward per step)
    cfg_drop: str = "refs"  # what the unconditional pass drops

    # ---- derived (not constructor arguments)
    video_channels: int = field(init=False)
    spatial_compression: int = field(init=False)
    temporal_compression: int = field(init=False)
    latent_height: int = field(init=False)
    latent_width: int = field(init=False)
    grid_height: int = field(init=False)  # token grid of one latent frame
    grid_width: int = field(init=False)
    tokens_per_frame: int = field(init=False)
    head_dim: int = field(init=False)
    control_in_channels: int = field(init=False)
    history_frames: int = field(init=False)  # video frames behind the history latents
    chunk_frames: int = field(init=False)  # new video frames per chunk
    clip_frames: int = field(init=False)  # history + chunk video frames (one causal clip)
    max_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        # JSON gives lists; the fields are tuples.
        for name in ("vae_dim_mult", "vae_spatial_down", "vae_temporal_down", "patch", "control_layers"):
            setattr(self, name, tuple(getattr(self, name)))
        for name in ("latent_mean", "latent_std"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self._validate()
        self.video_channels = 4 if self.depth_channel else 3
        self.spatial_compression = self.vae_patch * 2 ** sum(self.vae_spatial_down)
        self.temporal_compression = 2 ** sum(self.vae_temporal_down)
        self.latent_height = self.height // self.spatial_compression
        self.latent_width = self.width // self.spatial_compression
        self.grid_height = self.latent_height // self.patch[1]
        self.grid_width = self.latent_width // self.patch[2]
        self.tokens_per_frame = self.grid_height * self.grid_width
        self.head_dim = self.dim // self.num_heads
        self.control_in_channels = 2 * self.latent_channels
        self.history_frames = self.latent_to_video_frames(self.history_latent_frames)
        self.chunk_frames = self.chunk_latent_frames * self.temporal_compression
        self.clip_frames = self.history_frames + self.chunk_frames
        frames = self.num_refs + (self.history_latent_frames + self.chunk_latent_frames) // self.patch[0]
        self.max_tokens = frames * self.tokens_per_frame

    def _validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"ModelConfig {self.name!r}: {msg}")

        levels = len(self.vae_dim_mult) - 1
        need(levels >= 1, "vae_dim_mult needs at least two entries")
        need(
            len(self.vae_spatial_down) == levels and len(self.vae_temporal_down) == levels,
            f"vae_spatial_down and vae_temporal_down need {levels} flags (len(vae_dim_mult) - 1), "
            f"got {len(self.vae_spatial_down)} and {len(self.vae_temporal_down)}",
        )
        # The parameter-free shortcuts of each VAE level fold (2x time) x (2x2 space) into channels and average
        # (encoder) or repeat (decoder) channel groups, so the widths must divide accordingly.
        enc = [self.vae_dim * u for u in (1, *self.vae_dim_mult)]
        dec = [self.vae_dec_dim * u for u in (self.vae_dim_mult[-1], *self.vae_dim_mult[::-1])]
        for i in range(levels + 1):
            s = i < levels and self.vae_spatial_down[i]
            t = i < levels and self.vae_temporal_down[i]
            factor = (2 if t else 1) * (4 if s else 1)
            need(enc[i] * factor % enc[i + 1] == 0,
                 f"VAE encoder level {i}: width {enc[i]} x {factor} is not a multiple of {enc[i + 1]}")
            s = i < levels and self.vae_spatial_down[::-1][i]
            t = i < levels and self.vae_temporal_down[::-1][i]
            factor = (2 if t else 1) * (4 if s else 1)
            need(not (s or t) or dec[i + 1] * factor % dec[i] == 0,
                 f"VAE decoder level {i}: width {dec[i + 1]} x {factor} is not a multiple of {dec[i]}")
        sc = self.vae_patch * 2 ** sum(self.vae_spatial_down)
        need(
            self.height % (sc * self.patch[1]) == 0 and self.width % (sc * self.patch[2]) == 0,
            f"height x width {self.height}x{self.width} must be divisible by the VAE compression {sc} times the "
            f"patch {self.patch[1:]}",
        )
        need(self.patch[0] == 1, f"temporal patch {self.patch[0]} unsupported (history/target frames are per-latent)")
        need(self.dim % self.num_heads == 0, f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        hd = self.dim // self.num_heads
        need(hd % 2 == 0 and hd // 2 >= 3, f"head_dim {hd} must be even and >= 6 for 3-axis RoPE")
        need(
            all(0 <= i < self.num_layers for i in self.control_layers)
            and list(self.control_layers) == sorted(set(self.control_layers)),
            f"control_layers {self.control_layers} must be increasing layer indices below num_layers {self.num_layers}",
        )
        need(self.num_refs >= 0 and self.history_latent_frames >= 0, "num_refs and history_latent_frames must be >= 0")
        need(self.chunk_latent_frames >= 1, "chunk_latent_frames must be >= 1")
        need(self.attention_layout in ATTENTION_LAYOUTS,
             f"attention_layout {self.attention_layout!r} is not one of {ATTENTION_LAYOUTS}")
        need(self.act in ACTIVATIONS, f"act {self.act!r} is not one of {ACTIVATIONS}")
        need(self.sample_solver in SOLVERS, f"sample_solver {self.sample_solver!r} is not one of {SOLVERS}")
        need(self.cfg_drop in CFG_DROPS, f"cfg_drop {self.cfg_drop!r} is not one of {CFG_DROPS}")
        need(0 < self.depth_near < self.depth_far, "need 0 < depth_near < depth_far")
        for name in ("latent_mean", "latent_std"):
            v = getattr(self, name)
            need(v is None or len(v) == self.latent_channels, f"{name} needs {self.latent_channels} values")

    # ------------------------------------------------------------------ helpers
    def latent_to_video_frames(self, latent_frames: int) -> int:
        """Video frames of a causal clip with `latent_frames` latents: the first alone, then groups."""
        return 0 if latent_frames == 0 else 1 + self.temporal_compression * (latent_frames - 1)

    def video_to_latent_frames(self, frames: int) -> int:
        """Latent frames of a causal clip of `frames` video frames (1 + k * temporal_compression)."""
        if frames < 1 or (frames - 1) % self.temporal_compression:
            raise ValueError(
                f"a clip needs 1 + k*{self.temporal_compression} frames (the first alone, then groups of "
                f"{self.temporal_compression}); got {frames}"
            )
        return 1 + (frames - 1) // self.temporal_compression

    def to_dict(self) -> dict:
        """Constructor fields only (JSON-ready); derived fields are recomputed by `from_dict`."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        init_names = {f.name for f in dataclasses.fields(cls) if f.init}
        derived = {f.name for f in dataclasses.fields(cls) if not f.init}
        unknown = sorted(set(d) - init_names - derived)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in init_names})

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        d = dict(PRESETS[name], name=name)
        d.update(overrides)
        return cls.from_dict(d)


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


PRESETS: dict[str, dict] = {
    # Real time on 2 CPU cores: 8 new 128x128 RGB-D frames per chunk from 2 sampler steps over
    # (3 refs + 1 history + 2 target) x 64 tokens, the context's keys/values cached across steps and the
    # references' across chunks that keep them ("layered"); sizes chosen from `spatia bench model` measurements,
    # steps from `spatia eval` (2 steps scored best of 2, 3, 4 and 8).
    "tiny": dict(attention_layout="layered", sample_steps=2),
    # GPU-sized: 256x256 RGB-D, 8x VAE (32x32x16 latents, 256 tokens per latent frame).
    "small": dict(
        height=256,
        width=256,
        vae_patch=2,
        vae_dim=64,
        vae_dec_dim=64,
        vae_dim_mult=(1, 2, 4, 4),
        vae_num_res_blocks=2,
        vae_spatial_down=(True, True, False),
        vae_temporal_down=(False, True, True),
        latent_channels=16,
        dim=768,
        num_heads=12,
        num_layers=12,
        ffn_dim=3072,
        control_layers=(0, 2, 4, 6, 8, 10),
        num_refs=4,
        history_latent_frames=2,
        chunk_latent_frames=4,
        sample_steps=8,
        sample_shift=3.0,
    ),
    # The paper's model: Wan2.2-TI2V-5B (DiT + VAE) with 8 VACE control blocks; release defaults for sampling.
    "spatia-5b": dict(
        height=704,
        width=1248,
        fps=24.0,
        depth_channel=False,
        vae_patch=2,
        vae_dim=160,
        vae_dec_dim=256,
        vae_dim_mult=(1, 2, 4, 4),
        vae_num_res_blocks=2,
        vae_spatial_down=(True, True, True),
        vae_temporal_down=(False, True, True),
        latent_channels=48,
        latent_mean=WAN22_LATENT_MEAN,
        latent_std=WAN22_LATENT_STD,
        dim=3072,
        num_heads=24,
        num_layers=30,
        ffn_dim=14336,
        act="gelu_tanh",
        text_dim=4096,
        control_layers=(0, 4, 8, 12, 16, 20, 24, 28),
        num_refs=7,
        history_latent_frames=3,
        chunk_latent_frames=18,
        sample_steps=40,
        sample_shift=5.0,
        sample_solver="dpmpp_2m",
        cfg_scale=3.5,
        cfg_drop="text",
    ),
}
