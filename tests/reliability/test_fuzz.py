"""Bad input: a short fuzz run over the protocol decoder and every file reader (each case refused with its documented
error type, or accepted with a value that keeps the reader's contract), and a live server fed malformed messages."""

import random

from engine.bench import fuzz
from engine.server import protocol as P

from .helpers import RawClient, ServerProc, open_session

CASES = 30  # per target: 270 cases in a few seconds


def test_short_fuzz_run_every_reader_refuses_clearly():
    result = fuzz.fuzz(list(fuzz.TARGETS), CASES, seed=1)
    assert result["cases"] == CASES * len(fuzz.TARGETS)
    report = {t: {k: r[k] for k in ("accepted", "clear", *fuzz.FAILURES)} for t, r in result["targets"].items()}
    failures = {t: r["failures"] for t, r in result["targets"].items() if r["failures"]}
    assert result["failures"] == 0, (report, failures)
    for name, r in result["targets"].items():
        assert r["clear"] >= CASES // 4, (name, report[name])  # the mutations do reach the readers' checks
        assert set(r["error_types"]) <= {f"clear:{t.split(':')[1]}" for t in fuzz.CLEAR_ERRORS[name]}


def test_mutators_are_deterministic_and_change_their_input():
    seeds = [b"hello world, a valid input" * 4]
    a = [fuzz.mutate_bytes(seeds[0], random.Random(i), seeds) for i in range(50)]
    b = [fuzz.mutate_bytes(seeds[0], random.Random(i), seeds) for i in range(50)]
    assert a == b and sum(x != seeds[0] for x in a) >= 45
    text = "[1.0, 0.0]\n[0.5, 2.0]\n"
    assert len({fuzz.mutate_text(text, random.Random(i)) for i in range(50)}) > 30


def test_live_server_answers_malformed_messages_and_keeps_serving(tiny_checkpoint, tmp_path, ctx):
    rng = random.Random(7)
    seeds = [[bytes(f) for f in P.encode(cls.example())] for cls in P.message_classes().values()]
    heads = [s[0] for s in seeds]
    bad = []
    while len(bad) < 300:  # mutants the decoder refuses (valid ones would start real work)
        frames = fuzz.mutate_frames(rng.choice(seeds), rng, heads)
        try:
            P.decode(frames)
        except P.ProtocolError:
            bad.append(frames)
    server = ServerProc(tiny_checkpoint, tmp_path / "sessions", tmp_path / "server.log")
    c = RawClient(ctx, server.address)
    try:
        for frames in bad:
            c.sock.send_multipart(frames)
        answers = [c.recv(10.0) for _ in bad]
        assert all(a.type == "error" and a.code in set(P.ErrorCode) and a.message for a in answers)
        assert server.alive
        caps, _, start = open_session(c)  # still serving
        c.send(P.Heartbeat(t=1.0, seq=1))
        assert c.recv().type == "heartbeat"
    finally:
        c.close()
        server.stop()


def test_an_undocumented_error_type_is_a_failure_and_its_input_is_saved(tmp_path):
    """The harness itself: the same cases, with the reader's documented type taken away, become failures."""
    target = fuzz.build_target("w2c", tmp_path)
    results = [fuzz.run_case(target, case, 2, tmp_path) for case in range(20)]
    refused = [r["case"] for r in results if r["outcome"] == "clear"]
    assert refused and all(r["outcome"] in ("clear", "accepted") for r in results)
    target.clear = (KeyError,)  # as if TrajectoryFileError were not the documented type
    again = fuzz.run_case(target, refused[0], 2, tmp_path)
    assert again["outcome"] == "unclear" and again["type"] == "TrajectoryFileError" and "where" in again
    fuzz._save_failure("w2c", refused[0], 2, tmp_path)
    saved = tmp_path / "failures" / f"w2c-{refused[0]}.txt"
    assert saved.read_bytes() == fuzz.make_case(target, refused[0], 2)[0]
