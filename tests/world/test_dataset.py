"""Dataset: write/read round trip, resuming, parallel workers, clear errors, the RealEstate10K reader, the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

from engine.cli import main as spatia
from engine.geometry import Re10kTrajectory, intrinsics_to_K, write_re10k
from engine.world.dataset import (
    DatasetConfig,
    DatasetError,
    build_dataset,
    render_sequence,
    sequence_name,
    validate_sequence,
)
from engine.world.loader import Re10kDataset, WorldDataset
from engine.world.render import WorldRenderer

CFG = DatasetConfig(scenes=3, frames=6, width=40, height=32, dynamic=True, seed0=10)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    stats = build_dataset(CFG, root, workers=1, progress=False)
    assert stats["written"] == 3 and stats["skipped"] == 0
    return root


@pytest.fixture
def copy_root(dataset_root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(dataset_root, dst)
    return dst


def test_round_trip_matches_a_fresh_render(dataset_root):
    ds = WorldDataset(dataset_root, clip_len=3, stride=2)
    assert len(ds) == 3  # one clip of frames 0, 2, 4 per sequence
    item = ds[1]
    F, H, W = 3, CFG.height, CFG.width
    assert item["rgb"].shape == (F, 3, H, W) and item["rgb"].dtype == torch.float32
    assert item["depth"].shape == (F, 1, H, W) and item["dynamic_mask"].shape == (F, 1, H, W)
    assert item["w2c"].shape == (F, 4, 4) and item["K"].shape == (F, 3, 3)
    assert item["seq"] == sequence_name(1) and item["frames"].tolist() == [0, 2, 4]
    # the same sequence rendered again, independently of the files
    renderer = WorldRenderer(W, H)
    arrays, meta = render_sequence(renderer, CFG, 1)
    renderer.release()
    idx = [0, 2, 4]
    expect_rgb = torch.from_numpy(arrays["rgb"][idx]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(item["rgb"], expect_rgb)
    torch.testing.assert_close(item["depth"][:, 0], torch.from_numpy(arrays["depth"][idx].astype(np.float32)))
    torch.testing.assert_close(item["dynamic_mask"][:, 0], torch.from_numpy(arrays["ids"][idx] > 0).float())
    torch.testing.assert_close(item["w2c"], torch.from_numpy(arrays["w2c"][idx]).float())
    K = intrinsics_to_K(arrays["intrinsics"], W, H)
    torch.testing.assert_close(item["K"][0], torch.from_numpy(K).float())
    saved = json.loads((dataset_root / sequence_name(1) / "meta.json").read_text())
    assert saved == meta and saved["seed"] == 11 and saved["frames"] == 6
    assert (item["depth"] >= 0).all() and item["depth"].max() > 0.5


def test_clips_batch_through_a_dataloader(dataset_root):
    ds = WorldDataset(dataset_root, clip_len=2, step=2)
    assert len(ds) == 9  # starts 0, 2, 4 in each of 3 sequences
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["rgb"].shape == (4, 2, 3, CFG.height, CFG.width)
    assert batch["seq"][:3] == [sequence_name(0)] * 3
    with pytest.raises(DatasetError, match="long enough"):
        WorldDataset(dataset_root, clip_len=7)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_resume_skips_complete_sequences_and_cleans_partial_ones(copy_root):
    shutil.rmtree(copy_root / sequence_name(2))
    stale = copy_root / ".tmp_seq_000002_999"
    stale.mkdir()
    (stale / "rgb.npy").write_bytes(b"partial")
    before = (copy_root / sequence_name(0) / "rgb.npy").stat().st_mtime_ns
    stats = build_dataset(CFG, copy_root, workers=1, progress=False)
    assert stats["written"] == 1 and stats["skipped"] == 2
    assert not stale.exists()
    assert (copy_root / sequence_name(0) / "rgb.npy").stat().st_mtime_ns == before
    assert len(WorldDataset(copy_root, clip_len=6)) == 3
    other = DatasetConfig(scenes=3, frames=6, width=64, height=32, dynamic=True, seed0=10)
    with pytest.raises(DatasetError, match="different settings"):
        build_dataset(other, copy_root, workers=1, progress=False)


def test_parallel_workers_write_the_same_bytes(dataset_root, tmp_path):
    cfg = DatasetConfig(scenes=2, frames=6, width=40, height=32, dynamic=True, seed0=10)
    stats = build_dataset(cfg, tmp_path / "par", workers=2, progress=False)
    assert stats["written"] == 2
    for i in range(2):
        for f in ("rgb.npy", "depth.npy", "ids.npy", "w2c.txt"):
            a = (dataset_root / sequence_name(i) / f).read_bytes()
            assert a == (tmp_path / "par" / sequence_name(i) / f).read_bytes(), f"{f} differs between runs"


def test_missing_and_corrupt_sequences_are_named(copy_root):
    seq = sequence_name(1)
    (copy_root / seq / "depth.npy").unlink()
    with pytest.raises(DatasetError, match=f"{seq}.*missing file depth.npy"):
        WorldDataset(copy_root, clip_len=2)
    with pytest.raises(DatasetError, match="seq_000042.*not found"):
        WorldDataset(copy_root, clip_len=2, sequences=["seq_000042"])
    good = sequence_name(0)
    rgb = copy_root / good / "rgb.npy"
    rgb.write_bytes(rgb.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=f"{good}.*rgb.npy is truncated"):
        validate_sequence(copy_root / good)
    rgb.write_bytes(b"not an npy file at all")
    with pytest.raises(DatasetError, match=f"{good}.*rgb.npy is not a valid .npy"):
        validate_sequence(copy_root / good)
    seq2 = copy_root / sequence_name(2)
    (seq2 / "w2c.txt").write_text("[[1, 0, 0, 0], [0, 1, 0, 0]]\n")
    with pytest.raises(DatasetError, match=f"{sequence_name(2)}.*w2c.txt"):
        validate_sequence(seq2)
    (seq2 / "meta.json").write_text("{ broken")
    with pytest.raises(DatasetError, match=f"{sequence_name(2)}.*meta.json"):
        validate_sequence(seq2)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        WorldDataset(copy_root / "nowhere", clip_len=2)


def test_re10k_reader_matches_frames_by_timestamp(dataset_root, tmp_path):
    import imageio.v3 as iio

    # a RealEstate10K-style folder made from a rendered sequence: camera file + PNG frames named by timestamp
    src = dataset_root / sequence_name(0)
    rgb = np.load(src / "rgb.npy")
    w2c = np.array([json.loads(line) for line in (src / "w2c.txt").read_text().splitlines()])
    intr = np.tile(np.array(json.loads((src / "intrinsics.txt").read_text().replace(" ", ",").strip()))[None], (6, 1))
    ts = np.arange(6, dtype=np.int64) * 83333 + 1000
    (tmp_path / "cameras").mkdir()
    write_re10k(tmp_path / "cameras" / "clipA.txt", Re10kTrajectory("https://example.invalid/v", ts, intr, w2c))
    frames = tmp_path / "frames" / "clipA"
    frames.mkdir(parents=True)
    for t, img in zip(ts[::-1], rgb[::-1]):  # written in reverse: matching must use the names
        iio.imwrite(frames / f"{t}.png", img)
    ds = Re10kDataset(tmp_path, clip_len=3, stride=1)
    assert len(ds) == 2
    item = ds[1]
    assert "depth" not in item and "dynamic_mask" not in item
    torch.testing.assert_close(item["rgb"], torch.from_numpy(rgb[3:6]).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(item["w2c"], torch.from_numpy(w2c[3:6]).float(), atol=1e-6, rtol=0)
    assert item["K"].shape == (3, 3, 3) and item["seq"] == "clipA"
    small = Re10kDataset(tmp_path, clip_len=2, size=(20, 16))[0]
    assert small["rgb"].shape == (2, 3, 16, 20)
    torch.testing.assert_close(small["K"][0, 0, 0], item["K"][0, 0, 0] / 2)
    (frames / f"{ts[0]}.png").unlink()
    with pytest.raises(DatasetError, match="clipA.*5 images.*6 cameras"):
        Re10kDataset(tmp_path, clip_len=2)


def test_cli_dataset_and_preview(tmp_path):
    out = tmp_path / "cli"
    assert spatia(["world", "dataset", "--scenes", "1", "--frames", "4", "--res", "32x24", "--out", str(out),
                   "--workers", "1", "--quiet", "--kind", "outdoor"]) == 0
    meta = json.loads((out / sequence_name(0) / "meta.json").read_text())
    assert (meta["width"], meta["height"], meta["scene_kind"]) == (32, 24, "outdoor")
    assert spatia(["world", "dataset", "--scenes", "0", "--frames", "4", "--out", str(out)]) == 2
    assert spatia(["world", "dataset", "--scenes", "1", "--frames", "1", "--out", str(out)]) == 2
    video = tmp_path / "tour.mp4"
    assert spatia(["world", "preview", "--seed", "1", "--out", str(video), "--res", "48x32", "--frames", "12"]) == 0
    import imageio.v3 as iio

    assert video.stat().st_size > 1000
    sheet = iio.imread(video.with_suffix(".png"))
    assert sheet.shape == (3 * 32, 8 * 48, 3)
    assert spatia(["world", "preview", "--seed", "1", "--out", str(tmp_path / "tour.gif")]) == 2
