"""engine.files: atomic small files and .npz files written without stacking their pieces."""

import numpy as np
import pytest

from engine.files import write_npz, write_text_atomic


def test_write_npz_reads_back_like_savez_without_stacking(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (4, 5, 3), dtype=np.uint8) for _ in range(6)]
    depth = [rng.random((4, 5), dtype=np.float32) for _ in range(6)]
    index = np.arange(6, dtype=np.int64)
    write_npz(tmp_path / "a.npz", {"rgb": frames, "depth": depth, "index": index, "empty": np.zeros((0, 3))})
    np.savez(tmp_path / "b.npz", rgb=np.stack(frames), depth=np.stack(depth), index=index, empty=np.zeros((0, 3)))
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in b.files:
            assert a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name], b[name])
    flipped = [f[:, ::-1] for f in frames]  # views with negative strides are written in their logical order
    write_npz(tmp_path / "c.npz", {"rgb": flipped})
    with np.load(tmp_path / "c.npz") as c:
        np.testing.assert_array_equal(c["rgb"], np.stack(flipped))
    with pytest.raises(ValueError, match="part 1 is uint8\\[4, 3, 3\\], not uint8\\[4, 5, 3\\]"):
        write_npz(tmp_path / "d.npz", {"rgb": [frames[0], frames[1][:, :3]]})
    with pytest.raises(ValueError, match="empty sequence"):
        write_npz(tmp_path / "c.npz", {"rgb": []})


def test_write_text_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "status.json"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
