"""The protocol benchmark runs at a tiny size and reports consistent numbers."""

import argparse

from engine.bench import protocol


def test_protocol_bench_reports_overhead():
    out = protocol.run(argparse.Namespace(size=32, repeat=50, rounds=2))
    for key in ("raw_zmq_round_trip_ms", "protocol_round_trip_ms", "overhead_ms_per_frame", "round_trip_ms_p50"):
        assert out[key] >= -1.0 and out[key] < 1000
    assert out["raw_zmq_round_trip_ms"] > 0 and out["encode_decode_ms"] > 0
