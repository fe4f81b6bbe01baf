"""Wire protocol: every message round-trips; every malformed input raises ProtocolError and nothing else."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.server import protocol as P

CLASSES = P.message_classes()
REPO = Path(__file__).resolve().parents[2]


def assert_same(a: P.Message, b: P.Message) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), f.name
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y and type(x) is type(y), f.name


def header_of(frames) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


def with_header(frames, header: dict) -> list:
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def expect(code: P.ErrorCode, frames) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(frames)
    assert info.value.code == code, str(info.value)
    return info.value


# --------------------------------------------------------------------------------------------- every class
def test_registry_covers_the_issue():
    expected = {"hello", "capabilities", "open_procedural", "open_image", "open_points", "open_release", "trajectory",
                "cancel", "frame", "memory_delta", "resync", "clip_done", "edit_remove_box", "edit_remove_ids",
                "edit_recolor",
                "edit_insert_primitive", "edit_insert_points", "edit_undo", "save", "load", "ack", "error", "heartbeat"}
    assert expected <= set(CLASSES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_round_trip(name):
    msg = CLASSES[name].example()
    frames = P.encode(msg)
    assert isinstance(frames[0], bytes)
    spec_arrays = [f for f in dataclasses.fields(msg) if "array" in f.metadata and getattr(msg, f.name) is not None]
    assert len(frames) == 1 + len(spec_arrays)
    back = P.decode([bytes(f) for f in frames])
    assert_same(msg, back)
    assert back.type == name


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_field_documented(name):
    cls = CLASSES[name]
    docs = P.field_docs(cls)
    for f in dataclasses.fields(cls):
        assert docs.get(f.name, "").strip(), f"{cls.__name__}.{f.name} has no docstring"
    assert cls.__doc__ and "Message" not in cls.__doc__.splitlines()[0]


def test_docs_describe_every_message():
    text = (REPO / "docs" / "protocol.md").read_text()
    assert "```mermaid" in text and "sequenceDiagram" in text
    for name in CLASSES:
        assert f"`{name}`" in text, f"docs/protocol.md does not describe {name}"


def test_decoded_arrays_are_zero_copy_views():
    msg = P.Frame.example()
    frames = [bytearray(f) for f in P.encode(msg)]
    back = P.decode(frames)
    frames[1][0] ^= 0xFF  # the decoded array must see a change in the frame it wraps
    assert back.rgb[0, 0, 0] == msg.rgb[0, 0, 0] ^ 0xFF


def test_zmq_multipart_round_trip_without_copies():
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://protocol-test")
        b.connect("inproc://protocol-test")
        rng = np.random.default_rng(0)
        n = 50_000
        delta = P.MemoryDelta(version_from=0, version_to=1, full=True, added_ids=np.arange(n, dtype=np.int64),
                              added_xyz=rng.normal(size=(n, 3)).astype(np.float32),
                              added_rgb=rng.integers(0, 256, (n, 3), dtype=np.uint8),
                              removed_ids=np.zeros(0, np.int64), recolored_ids=np.zeros(0, np.int64),
                              recolored_rgb=np.zeros((0, 3), np.uint8))
        a.send_multipart(P.encode(delta), copy=False)
        assert b.poll(5000)
        back = P.decode(b.recv_multipart(copy=False))
        assert_same(delta, back)
    finally:
        a.close(0)
        b.close(0)


def test_big_endian_arrays_are_sent_little_endian():
    msg = P.Trajectory.example()
    msg.w2c = msg.w2c.astype(">f8")
    frames = P.encode(msg)
    assert header_of(frames)["arrays"][0]["dtype"] == "float64"
    np.testing.assert_array_equal(P.decode(frames).w2c, msg.w2c)


# --------------------------------------------------------------------------------------------- construction checks
def test_construction_rejects_bad_values():
    traj = P.Trajectory.example()
    bad_w2c = traj.w2c.copy()
    bad_w2c[1, 0, 3] = np.nan
    with pytest.raises(P.ProtocolError, match=r"trajectory.w2c: contains NaN"):
        P.Trajectory(seq=1, w2c=bad_w2c, intrinsics=traj.intrinsics)
    with pytest.raises(P.ProtocolError, match=r"dtype must be float64, got float32"):
        P.Trajectory(seq=1, w2c=traj.w2c.astype(np.float32), intrinsics=traj.intrinsics)
    scaled = traj.w2c.copy()
    scaled[:, :3, :3] *= 2.0
    with pytest.raises(P.ProtocolError, match=r"not orthonormal"):
        P.Trajectory(seq=1, w2c=scaled, intrinsics=traj.intrinsics)
    with pytest.raises(P.ProtocolError, match=r"last row"):
        P.Trajectory(seq=1, w2c=traj.w2c * 2.0, intrinsics=traj.intrinsics)
    with pytest.raises(P.ProtocolError, match=r"focal"):
        P.Trajectory(seq=1, w2c=traj.w2c, intrinsics=np.array([-1.0, 1.0, 0.5, 0.5]))
    with pytest.raises(P.ProtocolError, match=r"M=5 disagrees with M=6"):
        P.MemoryDelta(version_from=0, version_to=1, added_ids=np.arange(6), added_xyz=np.zeros((5, 3), np.float32),
                      added_rgb=np.zeros((6, 3), np.uint8), removed_ids=np.zeros(0, np.int64),
                      recolored_ids=np.zeros(0, np.int64), recolored_rgb=np.zeros((0, 3), np.uint8))
    for name in ["", "../etc/passwd", "a b", "x" * 65, "café"]:
        with pytest.raises(P.ProtocolError, match="session name"):
            P.Load(name=name)
    assert P.Save(name="Room-2_b").name == "Room-2_b"
    with pytest.raises(P.ProtocolError, match="expected an int"):
        P.Cancel(seq="3")
    with pytest.raises(P.ProtocolError, match="not one of"):
        P.Error(code="teapot", message="x")
    with pytest.raises(P.ProtocolError, match="needs 1 or N=3 rows"):
        ex = P.OpenRelease.example()
        P.OpenRelease(image=ex.image, w2c=ex.w2c, intrinsics=np.repeat(ex.intrinsics, 2, 0), prompts=["p"])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_depth_must_be_finite_and_non_negative(dtype):
    ex = P.Frame.example()
    depth = ex.depth.astype(dtype)
    depth[0, 0] = -0.0  # negative zero is zero
    P.Frame(index=0, seq=0, rgb=ex.rgb, depth=depth, w2c=ex.w2c)
    for bad, match in [(-0.5, "non-negative"), (np.inf, "NaN or inf"), (np.nan, "NaN or inf")]:
        depth[1, 1] = bad
        with pytest.raises(P.ProtocolError, match=match):
            P.Frame(index=0, seq=0, rgb=ex.rgb, depth=depth, w2c=ex.w2c)
        depth[1, 1] = 1.0


def test_lists_convert_to_the_declared_dtype():
    box = P.EditRemoveBox(edit_id=1, box_min=[0, 0, 0], box_max=[1, 2, 3])
    assert box.box_max.dtype == np.float64 and box.box_max.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(P.ProtocolError, match="box_min"):
        P.EditRemoveBox(edit_id=1, box_min=[2, 0, 0], box_max=[1, 2, 3])


def test_protocol_error_becomes_an_error_message():
    err = P.ProtocolError(P.ErrorCode.INVALID, "frame.rgb: bad")
    msg = err.to_message("frame")
    assert isinstance(msg, P.Error) and msg.code is P.ErrorCode.INVALID and msg.ref_type == "frame"
    assert_same(msg, P.decode(P.encode(msg)))


def test_encode_refuses_oversize(monkeypatch):
    monkeypatch.setattr(P, "MAX_MESSAGE_BYTES", 100)
    with pytest.raises(P.ProtocolError) as info:
        P.encode(P.Frame.example())
    assert info.value.code == P.ErrorCode.TOO_LARGE


# --------------------------------------------------------------------------------------------- malformed input
def test_garbage_and_structure():
    expect(P.ErrorCode.MALFORMED, [])
    expect(P.ErrorCode.MALFORMED, "not a list")
    expect(P.ErrorCode.MALFORMED, [b"\xc1\xc1garbage"])  # 0xc1 is never valid msgpack
    expect(P.ErrorCode.MALFORMED, [b""])
    expect(P.ErrorCode.MALFORMED, [msgpack.packb([1, 2, 3])])
    expect(P.ErrorCode.MALFORMED, [msgpack.packb({"v": 1, "type": "hello"})])
    expect(P.ErrorCode.MALFORMED, [msgpack.packb({"v": 1, "type": "hello", "fields": [], "arrays": []})])
    expect(P.ErrorCode.MALFORMED, [12345])
    expect(P.ErrorCode.MALFORMED, [msgpack.packb({"v": 1, "type": "hello", "fields": {}, "arrays": []}) + b"\x00"])


def test_unknown_type_and_wrong_version():
    frames = P.encode(P.Hello.example())
    h = header_of(frames)
    expect(P.ErrorCode.UNKNOWN_TYPE, with_header(frames, {**h, "type": "teleport"}))
    expect(P.ErrorCode.UNKNOWN_TYPE, with_header(frames, {**h, "type": 5}))
    err = expect(P.ErrorCode.VERSION, with_header(frames, {**h, "v": P.PROTOCOL_VERSION + 1}))
    assert str(P.PROTOCOL_VERSION + 1) in err.message
    expect(P.ErrorCode.VERSION, with_header(frames, {**h, "v": "1"}))


def test_missing_and_unknown_fields():
    frames = P.encode(P.Trajectory.example())
    h = header_of(frames)
    fields = dict(h["fields"])
    del fields["seq"]
    assert "seq" in expect(P.ErrorCode.INVALID, with_header(frames, {**h, "fields": fields})).message
    expect(P.ErrorCode.INVALID, with_header(frames, {**h, "fields": {**h["fields"], "speed": 3}}))
    expect(P.ErrorCode.INVALID, with_header(frames, {**h, "fields": {**h["fields"], "seq": 2.5}}))
    expect(P.ErrorCode.INVALID, with_header(frames, {**h, "fields": {**h["fields"], "t_input": None}}))
    # an array missing altogether (its entry and its frame)
    rest = [{**h["arrays"][1], "frame": 1}]
    assert "w2c" in expect(P.ErrorCode.INVALID, [msgpack.packb({**h, "arrays": rest}), frames[2]]).message


def test_truncated_and_wrong_buffer_count():
    frames = [bytes(f) for f in P.encode(P.Frame.example())]
    expect(P.ErrorCode.MALFORMED, [frames[0], frames[1][:-1], *frames[2:]])  # truncated buffer
    expect(P.ErrorCode.MALFORMED, [frames[0], *frames[1:], b"extra"])  # one frame too many
    expect(P.ErrorCode.MALFORMED, frames[:-1])  # one frame too few
    expect(P.ErrorCode.MALFORMED, [frames[0][:-3], *frames[1:]])  # truncated header
    h = header_of(frames)
    h["arrays"][1]["frame"] = h["arrays"][0]["frame"]  # two arrays claiming one buffer
    expect(P.ErrorCode.MALFORMED, with_header(frames, h))


def test_wrong_dtype_and_shape():
    frames = P.encode(P.Trajectory.example())
    h = header_of(frames)
    w2c = next(a for a in h["arrays"] if a["name"] == "w2c")
    for dtype in ["float32", "object", "V8", "<f8", 3]:
        w2c["dtype"] = dtype
        expect(P.ErrorCode.INVALID, with_header(frames, h))
    w2c["dtype"] = "float64"
    n = w2c["shape"][0]
    for shape in [[n, 16], [n, 4, 4, 1], [n * 4, 4], [n, 4, -4], "4x4", [n, 4, 4.0], [n, True, 4]]:
        w2c["shape"] = shape
        expect(P.ErrorCode.INVALID, with_header(frames, h))


def test_huge_shapes_are_refused_before_allocation():
    frames = P.encode(P.MemoryDelta.example())
    h = header_of(frames)
    for entry in h["arrays"]:
        if entry["name"] == "added_xyz":
            entry["shape"] = [2**62, 3]
    expect(P.ErrorCode.TOO_LARGE, with_header(frames, h))
    h = header_of(frames)
    for entry in h["arrays"]:
        if entry["name"] == "added_ids":
            entry["shape"] = [2**64 - 1]  # the largest integer msgpack can carry
    expect(P.ErrorCode.TOO_LARGE, with_header(frames, h))
    image = P.Frame.example()
    h = header_of(P.encode(image))
    h["arrays"][0]["shape"] = [P.MAX_IMAGE_SIDE + 1, 8, 3]
    expect(P.ErrorCode.TOO_LARGE, with_header(P.encode(image), h))


def test_nan_pose_and_non_rigid_pose_on_the_wire():
    msg = P.Trajectory.example()
    frames = [bytearray(f) for f in P.encode(msg)]
    h = header_of(frames)
    k = next(a["frame"] for a in h["arrays"] if a["name"] == "w2c")
    w2c = np.frombuffer(frames[k], dtype="<f8").reshape(-1, 4, 4)
    w2c[2, 1, 1] = np.nan
    assert "NaN" in expect(P.ErrorCode.INVALID, frames).message
    w2c[2, 1, 1] = 5.0
    assert "orthonormal" in expect(P.ErrorCode.INVALID, frames).message


def test_oversize_message(monkeypatch):
    frames = P.encode(P.Frame.example())
    monkeypatch.setattr(P, "MAX_MESSAGE_BYTES", 200)
    expect(P.ErrorCode.TOO_LARGE, frames)
    monkeypatch.setattr(P, "MAX_MESSAGE_BYTES", 2**28)
    monkeypatch.setattr(P, "MAX_HEADER_BYTES", 16)
    expect(P.ErrorCode.TOO_LARGE, frames)


def test_bad_session_name_on_the_wire():
    frames = P.encode(P.Load.example())
    h = header_of(frames)
    expect(P.ErrorCode.INVALID, with_header(frames, {**h, "fields": {"name": "../../secret"}}))


# --------------------------------------------------------------------------------------------- the pose rule
def test_newest_pose_wins():
    ex = P.Trajectory.example()
    box = P.NewestWins()
    chunk = lambda seq: P.Trajectory(seq=seq, w2c=ex.w2c, intrinsics=ex.intrinsics)  # noqa: E731
    assert box.offer(chunk(1)) and box.offer(chunk(3))
    assert not box.offer(chunk(2))  # stale: arrived after a newer one
    assert not box.offer(chunk(3))  # duplicate
    assert box.take().seq == 3 and box.take() is None
    assert not box.offer(chunk(3)) and box.offer(chunk(4)) and box.take().seq == 4


# --------------------------------------------------------------------------------------------- fuzz
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
                    st.binary(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)
EXAMPLES = [P.encode(cls.example()) for cls in CLASSES.values()]


def decode_only_protocol_errors(frames) -> None:
    try:
        msg = P.decode(frames)
    except P.ProtocolError as e:
        assert isinstance(e.code, P.ErrorCode)
    else:
        assert isinstance(msg, P.Message)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=5))
def test_fuzz_random_frames(frames):
    decode_only_protocol_errors(frames)


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(EXAMPLES))), st.data())
def test_fuzz_mutated_messages(which, data):
    frames = [bytes(f) for f in EXAMPLES[which]]
    header = header_of(frames)
    action = data.draw(st.sampled_from(["field", "array", "top", "bytes", "frames"]))
    if action == "field" and header["fields"]:
        key = data.draw(st.sampled_from(sorted(header["fields"])))
        header["fields"][key] = data.draw(VALUES)
        frames = with_header(frames, header)
    elif action == "array" and header["arrays"]:
        entry = data.draw(st.sampled_from(header["arrays"]))
        entry[data.draw(st.sampled_from(["name", "dtype", "shape", "frame"]))] = data.draw(VALUES)
        frames = with_header(frames, header)
    elif action == "top":
        header[data.draw(st.sampled_from(["v", "type", "fields", "arrays", "extra"]))] = data.draw(VALUES)
        frames = with_header(frames, header)
    elif action == "bytes":
        i = data.draw(st.integers(0, len(frames) - 1))
        blob = bytearray(frames[i])
        if blob:
            pos = data.draw(st.integers(0, len(blob) - 1))
            blob[pos] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(blob)))
        frames[i] = bytes(blob[:cut])
    else:
        frames = data.draw(st.permutations(frames))[: data.draw(st.integers(0, len(frames) + 1))]
        frames += data.draw(st.lists(st.binary(max_size=32), max_size=2))
    decode_only_protocol_errors(frames)


DTYPES = st.sampled_from(["uint8", "int64", "float16", "float32", "float64", "bool", "<f8", "object"])
SHAPES = st.lists(st.integers(0, 6), max_size=4) | st.lists(st.integers(-2, 2**64 - 1), max_size=3)


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CLASSES)), st.data())
def test_fuzz_random_headers(type_name, data):
    """Headers with the right field names but random values, shapes, dtypes and buffers: the deep paths."""
    names = [f.name for f in dataclasses.fields(CLASSES[type_name])] + ["junk"]
    fields = data.draw(st.dictionaries(st.sampled_from(names), SCALARS, max_size=len(names)))
    arrays = data.draw(st.lists(st.fixed_dictionaries({"name": st.sampled_from(names), "dtype": DTYPES,
                                                       "shape": SHAPES, "frame": st.integers(-1, 4)}), max_size=4))
    buffers = data.draw(st.lists(st.binary(max_size=300), max_size=4))
    header = {"v": P.PROTOCOL_VERSION, "type": type_name, "fields": fields, "arrays": arrays}
    decode_only_protocol_errors([msgpack.packb(header, use_bin_type=True), *buffers])


def test_enum_fields_stay_enums():
    back = P.decode(P.encode(P.EditInsertPrimitive.example()))
    assert isinstance(back.shape, enum.Enum) and back.shape is P.Primitive.BOX
