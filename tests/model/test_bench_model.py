"""`spatia bench model`: the report's fields and the FLOP count (attention included).

The speed goal (fps >= 16 for tiny) lives in the benchmark and BENCHMARKS.md, not in a timed test."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from engine.bench import model as bench


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_flop_count_includes_attention():
    b, h, n, d = 2, 3, 40, 16
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    assert bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 4 * b * h * n * n * d
    a, m = torch.randn(8, 32), torch.randn(32, 5)
    assert bench.count_flops(lambda: a @ m) == 2 * 8 * 32 * 5


def test_report_fields_and_consistency():
    out = bench.run(_args(config="tiny", steps=1, repeat=1, warmup=0, peak_size=256))
    for key in ("params_dit", "params_vae", "gflops_per_step", "dit_step_ms", "vae_decode_ms_per_frame",
                "chunk_frames", "chunk_ms", "fps", "first_frame_ms", "peak_gflops", "achieved_gflops",
                "control_encode_ms", "sample_ms", "sample_ms_uncached", "machine"):  # fmt: skip
        assert key in out, key
    assert out["chunk_frames"] == 8 and out["tokens"] == (3 + 1 + 2) * 64 and out["steps"] == 1
    assert out["fps"] == pytest.approx(out["chunk_frames"] / (out["chunk_ms"] / 1e3), rel=0.01)
    assert 0 < out["first_frame_ms"] <= out["chunk_ms"]
    assert out["gflops_per_step"] > 5.0  # ~7 GFLOP: 9 blocks over 384 tokens plus attention
    assert out["machine"]["torch_threads"] >= 1
    assert out["attention_layout"] == "layered" and out["sample_ms"] > 0 and out["sample_ms_uncached"] > 0
    # the short chunk with the references' keys/values kept computes 2 of its 5 frames' tokens
    assert out["short_sample_ms"] > 0 and out["short_sample_refs_kept_ms"] > 0
    assert 0.3 < out["short_gflops_refs_kept"] / out["short_gflops"] < 0.5
