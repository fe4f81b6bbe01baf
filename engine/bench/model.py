"""Model speed: DiT step, VAE decode, one chunk end to end (all sampler steps + decode), fps, FLOP efficiency.

`spatia bench model --config tiny --json` measures, on synthetic inputs shaped by the config (num_refs
references, history and target latent frames, control latents, text when the model has it):
  - dit_step_ms: one sampler step inside the chunks (1 DiT forward, 2 with classifier-free guidance; with
    attention_layout "context" the first step of a chunk also fills the context cache, later ones reuse it);
  - sample_ms: all sampler steps of a chunk; sample_ms_uncached: the same recomputing the context every step
    (the reference the context cache is measured against, same run);
  - gflops_per_step: FLOPs of a chunk's sampling / steps (torch.utils.flop_counter, attention included);
  - chunk_ms: sampling all steps + decoding the clip's latents (history + target, fresh causal state);
    fps = chunk_frames / chunk time; first_frame_ms: chunk start until the first new frame is decoded;
  - control_encode_ms: encoding the scene video + coverage mask of one clip (the conditioning cost per chunk);
  - short_sample_ms: the server's short chunk after a turn (one target latent frame, one step) from
    [references | history | target]; short_sample_refs_kept_ms: the same with the references' keys/values kept
    from an earlier chunk (attention_layout "layered"; None otherwise), with the FLOPs of each;
  - peak_gflops: a large fp32 matmul in the same run; achieved_gflops: sampling FLOPs / sampling time.
On a CPU shared with other processes run it as `OMP_WAIT_POLICY=PASSIVE spatia bench model ...`: spinning OpenMP
threads otherwise stall each other whenever one is descheduled (10x slower steps on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="model preset (tiny, small, spatia-5b)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--solver", default=None, help="euler or dpmpp_2m (default: the preset's)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions (medians are reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    parser.add_argument("--backend", default="eager", choices=("eager", "compile", "tensorrt"),
                        help="how the DiT runs (engine.model.backends); the VAE runs eager")
    parser.add_argument("--peak-size", type=int, default=2048, help="matrix size of the matmul peak measurement")


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn) -> int:
    """FLOPs of `fn()`; CPU attention kernels are counted with the standard SDPA formula."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def run(args: argparse.Namespace) -> dict:
    import statistics

    import torch

    from engine.bench.timing import machine_info, matmul_peak_gflops, synchronize
    from engine.model.backends import apply_backend
    from engine.model.configs import ModelConfig
    from engine.model.control_encoder import ControlEncoder
    from engine.model.dit import ContextCache, SpatiaDiT
    from engine.model.sampler import sample
    from engine.model.vae import VideoVAE

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    dtype = getattr(torch, args.dtype)
    cfg = ModelConfig.from_name(args.config)
    steps = cfg.sample_steps if args.steps is None else args.steps
    torch.manual_seed(0)
    with torch.device(device):
        dit = SpatiaDiT(cfg).to(dtype).eval()
        vae = VideoVAE(cfg).to(dtype).eval()
        distilled = ControlEncoder(cfg).to(dtype).eval()  # the VAE's control encoding, distilled
    params_dit = sum(p.numel() for p in dit.parameters())
    eager_dit = dit
    dit, backend = apply_backend(dit, cfg, args.backend)

    g = torch.Generator().manual_seed(0)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    fh, ft = cfg.history_latent_frames, cfg.chunk_latent_frames

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    refs = rand(1, c, cfg.num_refs, h, w) if cfg.num_refs else None
    history = rand(1, c, fh, h, w) if fh else None
    control = rand(1, cfg.control_in_channels, fh + ft, h, w)
    text = rand(1, cfg.text_len, cfg.text_dim) if cfg.text_dim is not None else None
    passes = 1 if cfg.cfg_scale == 1.0 else 2

    with torch.no_grad():
        def sampling(cached: bool = True, step_times: list | None = None, net=dit):
            return sample(net, cfg, history=history, refs=refs, control=control, text=text, steps=steps,
                          solver=args.solver, generator=torch.Generator().manual_seed(1), context_cache=cached,
                          callback=None if step_times is None else lambda info: step_times.append(info.step_ms))

        flops_sample = count_flops(lambda: sampling(net=eager_dit))
        short_control = control[:, :, : fh + 1]  # history + one target latent frame

        def short(kept: ContextCache | None = None, net=dit):
            """The short chunk: one target latent frame in one step (from kept references' keys/values)."""
            return sample(net, cfg, history=history, refs=refs if kept is None else None, control=short_control,
                          text=text, target_frames=1, steps=1, generator=torch.Generator().manual_seed(2),
                          context=None if kept is None else kept.fork())

        kept = None
        if cfg.attention_layout == "layered" and refs is not None and history is not None and passes == 1:
            first = ContextCache()
            sample(dit, cfg, history=history, refs=refs, control=short_control, target_frames=1, steps=1,
                   generator=torch.Generator().manual_seed(2), context=first)
            kept = first.references()
        flops_short = count_flops(lambda: short(net=eager_dit))
        flops_short_kept = count_flops(lambda: short(kept, net=eager_dit)) if kept is not None else None
        compile_s = 0.0
        if backend != "eager":  # the first calls build the compiled graphs: timed apart, never in the medians
            t0 = time.perf_counter()
            sampling(True)
            sampling(False)
            short()
            if kept is not None:
                short(kept)
            synchronize()
            compile_s = time.perf_counter() - t0
        z = rand(1, c, fh + ft, h, w)
        clip_frames = cfg.latent_to_video_frames(fh + ft)
        scene = torch.rand(1, cfg.video_channels, clip_frames, cfg.height, cfg.width, generator=g).to(device, dtype)
        mask = (torch.rand(1, 1, clip_frames, cfg.height, cfg.width, generator=g) > 0.3).to(device, dtype)
        flops_control = count_flops(lambda: vae.encode_control(scene, mask))
        flops_control_distilled = count_flops(lambda: distilled.encode_control(scene, mask))

        def chunk(step_times: list) -> tuple[float, float]:
            """One chunk: sample all steps, then stream-decode history + target. -> (total ms, first-frame ms)."""
            synchronize()
            t0 = time.perf_counter()
            target = sampling(True, step_times)
            latents = target if history is None else torch.cat([history, target], dim=2)
            cache = vae.new_decode_cache()
            first_ms = None
            for i in range(latents.shape[2]):
                frames = vae.decode_step(latents[:, :, i : i + 1], cache)
                if i >= fh and first_ms is None:
                    synchronize()
                    first_ms = (time.perf_counter() - t0) * 1e3
                del frames
            synchronize()
            return (time.perf_counter() - t0) * 1e3, first_ms

        def timed(fn) -> float:
            synchronize()
            t0 = time.perf_counter()
            fn()
            synchronize()
            return (time.perf_counter() - t0) * 1e3

        # Rounds interleave every measurement, so a burst of load from other processes hits them alike.
        for _ in range(args.warmup):
            chunk([])
            vae.decode(z)
        chunk_times, first_times, step_times, decode_times, encode_times, distilled_times = [], [], [], [], [], []
        sample_times, uncached_times, short_times, short_kept_times = [], [], [], []
        for _ in range(args.repeat):
            steps_now: list[float] = []
            total, first = chunk(steps_now)
            step_times += steps_now
            sample_times.append(sum(steps_now))
            uncached_times.append(timed(lambda: sampling(False)))
            chunk_times.append(total)
            first_times.append(first)
            decode_times.append(timed(lambda: vae.decode(z)))
            encode_times.append(timed(lambda: vae.encode_control(scene, mask)))
            distilled_times.append(timed(lambda: distilled.encode_control(scene, mask)))
            short_times.append(timed(short))
            if kept is not None:
                short_kept_times.append(timed(lambda: short(kept)))

    chunk_ms = statistics.median(chunk_times)
    peak = matmul_peak_gflops(args.peak_size, device=str(device), dtype=dtype)
    step_ms = statistics.median(step_times)  # one sampler step: `passes` DiT forwards + the solver update
    decode_ms = statistics.median(decode_times)
    sample_ms = statistics.median(sample_times)
    gflops_per_step = flops_sample / steps / 1e9
    achieved = flops_sample / 1e9 / (sample_ms / 1e3)
    return {
        "benchmark": "model",
        "config": cfg.name,
        "device": str(device),
        "dtype": args.dtype,
        "backend": backend,
        "compile_s": round(compile_s, 1),
        "resolution": [cfg.height, cfg.width],
        "params_dit": params_dit,
        "params_vae": sum(p.numel() for p in vae.parameters()),
        "tokens": (cfg.num_refs + fh + ft) * cfg.tokens_per_frame,
        "steps": steps,
        "solver": args.solver or cfg.sample_solver,
        "forwards_per_step": passes,
        "gflops_per_step": round(gflops_per_step, 3),
        "attention_layout": cfg.attention_layout,
        "dit_step_ms": round(step_ms, 2),
        "sample_ms": round(sample_ms, 2),
        "sample_ms_uncached": round(statistics.median(uncached_times), 2),
        "vae_decode_ms_per_frame": round(decode_ms / clip_frames, 3),
        "control_encode_ms": round(statistics.median(encode_times), 2),  # VAE encoder, one clip (history + chunk)
        "control_encode_distilled_ms": round(statistics.median(distilled_times), 2),  # ControlEncoder, same clip
        "control_gflops": round(flops_control / 1e9, 3),
        "control_gflops_distilled": round(flops_control_distilled / 1e9, 3),
        "short_sample_ms": round(statistics.median(short_times), 2),
        "short_sample_refs_kept_ms": round(statistics.median(short_kept_times), 2) if short_kept_times else None,
        "short_gflops": round(flops_short / 1e9, 3),
        "short_gflops_refs_kept": None if flops_short_kept is None else round(flops_short_kept / 1e9, 3),
        "chunk_frames": cfg.chunk_frames,
        "chunk_ms": round(chunk_ms, 2),
        "fps": round(cfg.chunk_frames / (chunk_ms / 1e3), 2),
        "first_frame_ms": round(statistics.median(first_times), 2),
        "peak_gflops": round(peak, 1),
        "achieved_gflops": round(achieved, 1),
        "peak_ratio": round(peak / achieved, 2),
        # OpenMP's default spin-waiting collapses 2-thread torch when other processes share the cores;
        # OMP_WAIT_POLICY=PASSIVE (set before torch starts) keeps it robust. Reported so runs can be compared.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "machine": machine_info(),
    }
