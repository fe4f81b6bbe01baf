"""masks: the release's mask formats (PNG, folder of PNGs, .npy) and a clear error for each bad input."""

import imageio.v3 as iio
import numpy as np
import pytest

from engine.segment import get_segmenter
from engine.segment.masks import MaskFileError, read_masks

H, W = 12, 16


def _mask(seed):
    return np.random.default_rng(seed).random((H, W)) > 0.5


def test_single_png_0_255(tmp_path):
    m = _mask(0)
    iio.imwrite(tmp_path / "m.png", (m * 255).astype(np.uint8))
    out = read_masks(tmp_path / "m.png", H, W)
    assert out.shape == (1, H, W) and out.dtype == bool
    np.testing.assert_array_equal(out[0], m)


def test_png_0_1_and_rgba(tmp_path):
    m = _mask(1)
    iio.imwrite(tmp_path / "01.png", m.astype(np.uint8))  # 0/1 values
    np.testing.assert_array_equal(read_masks(tmp_path / "01.png")[0], m)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = m * 255
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_masks(tmp_path / "rgba.png")[0], m)


def test_folder_in_natural_order(tmp_path):
    ms = [_mask(s) for s in range(11)]
    for i, m in enumerate(ms):
        iio.imwrite(tmp_path / f"mask_{i}.png", (m * 255).astype(np.uint8))
    (tmp_path / "notes.txt").write_text("not a mask")
    out = read_masks(tmp_path, H, W)
    assert out.shape == (11, H, W)
    np.testing.assert_array_equal(out, np.stack(ms))  # mask_10 after mask_9


def test_npy(tmp_path):
    ms = np.stack([_mask(s) for s in range(3)])
    np.save(tmp_path / "m.npy", ms.astype(np.uint8))
    np.testing.assert_array_equal(read_masks(tmp_path / "m.npy", H, W), ms)
    np.save(tmp_path / "one.npy", ms[0])  # [H, W] is one mask
    assert read_masks(tmp_path / "one.npy").shape == (1, H, W)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(MaskFileError, match="no such mask file"):
        read_masks(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskFileError, match="no .png masks"):
        read_masks(tmp_path / "empty")
    (tmp_path / "m.jpg").write_bytes(b"x")
    with pytest.raises(MaskFileError, match=r"m\.jpg.*unsupported mask format"):
        read_masks(tmp_path / "m.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MaskFileError, match=r"broken\.png: cannot read"):
        read_masks(tmp_path / "broken.png")
    (tmp_path / "broken.npy").write_bytes(b"nonsense")
    with pytest.raises(MaskFileError, match=r"broken\.npy: cannot read"):
        read_masks(tmp_path / "broken.npy")
    np.save(tmp_path / "4d.npy", np.zeros((1, 2, H, W)))
    with pytest.raises(MaskFileError, match=r"4d\.npy.*\[N, H, W\]"):
        read_masks(tmp_path / "4d.npy")


def test_wrong_size(tmp_path):
    iio.imwrite(tmp_path / "m.png", np.zeros((H, W + 1), np.uint8))
    with pytest.raises(MaskFileError, match=rf"m\.png: mask is {W + 1}x{H}.*frames are {W}x{H}"):
        read_masks(tmp_path / "m.png", H, W)
    d = tmp_path / "mixed"
    d.mkdir()
    iio.imwrite(d / "a.png", np.zeros((H, W), np.uint8))
    iio.imwrite(d / "b.png", np.zeros((H + 2, W), np.uint8))
    with pytest.raises(MaskFileError, match=r"b\.png.*first mask"):
        read_masks(d)


def test_segmenter_replays_masks_across_clips(tmp_path):
    ms = np.stack([_mask(s) for s in range(5)])
    np.save(tmp_path / "m.npy", ms)
    seg = get_segmenter("masks", path=tmp_path / "m.npy", num_frames=5)
    rgb = np.zeros((3, H, W, 3), np.uint8)
    np.testing.assert_array_equal(seg.segment(rgb), ms[:3])
    np.testing.assert_array_equal(seg.segment(rgb[:2]), ms[3:5])
    with pytest.raises(MaskFileError, match="5 masks, but frames 5..5"):
        seg.segment(rgb[:1])
    seg.reset()
    np.testing.assert_array_equal(seg.segment(rgb[:1]), ms[:1])


def test_one_mask_for_every_frame_and_count_and_size_errors(tmp_path):
    m = _mask(7)
    seg = get_segmenter("masks", masks=m)
    out = seg.segment(np.zeros((4, H, W, 3), np.uint8))
    assert out.shape == (4, H, W) and (out == m).all()
    with pytest.raises(MaskFileError, match="masks are 16x12 \\(WxH\\), frames are 8x12"):
        seg.segment(np.zeros((1, H, 8, 3), np.uint8))
    np.save(tmp_path / "three.npy", np.zeros((3, H, W), bool))
    with pytest.raises(MaskFileError, match=r"three\.npy: 3 masks for 5 frames"):
        get_segmenter("masks", path=tmp_path / "three.npy", num_frames=5)
    with pytest.raises(ValueError, match="exactly one of"):
        get_segmenter("masks")
