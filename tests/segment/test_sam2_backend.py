"""sam2: the real video predictor with random weights at 256 px, tracking across clips (skipped without sam2)."""

import numpy as np
import pytest
import torch

from engine.segment import Prompt, SegmenterUnavailable, available_segmenters, get_segmenter
from engine.segment.sam2_backend import CHECKPOINT_ENV

H, W = 64, 80


@pytest.fixture(autouse=True)
def single_thread_torch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip():
    return np.random.default_rng(0).integers(0, 256, (3, H, W, 3), dtype=np.uint8)


def _random_sam2():
    pytest.importorskip("sam2", reason="the optional sam2 package is not installed")
    return get_segmenter("sam2", random_init=True, image_size=256, device="cpu")


def test_mask_prompt_tracks_through_two_clips(clip):
    seg = _random_sam2()
    prompt_mask = np.zeros((H, W), bool)
    prompt_mask[16:48, 20:60] = True
    m1 = seg.segment(clip, prompt=Prompt(mask=prompt_mask))
    import sys

    assert "torchvision" not in sys.modules  # the video predictor path runs without it
    assert m1.shape == (3, H, W) and m1.dtype == bool
    # SAM 2 passes a mask prompt through as the prompted frame's output (then down/up-sampled to 64x64 and back)
    iou = (m1[0] & prompt_mask).sum() / (m1[0] | prompt_mask).sum()
    assert iou > 0.9
    m2 = seg.segment(clip[::-1].copy())  # the next clip: no prompt, tracking continues
    assert m2.shape == (3, H, W)
    assert seg.state["num_frames"] == 6
    assert set(seg.state["output_dict_per_obj"][0]["cond_frame_outputs"]) == {0}
    assert set(seg.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]) == {1, 2, 3, 4, 5}


def test_points_and_box_prompts_and_pruning(clip):
    seg = _random_sam2()
    seg.memory_reach = 2  # keep only two frames of per-frame outputs, to see the pruning
    prompts = [Prompt(points=[[40.5, 30.5]], labels=[1], obj_id=1), Prompt(box=[10, 10, 30, 40], obj_id=2)]
    seg.segment(clip, prompt=prompts)
    seg.segment(clip)
    outs = seg.state["output_dict_per_obj"]
    assert len(outs) == 2
    for o in outs.values():
        assert set(o["non_cond_frame_outputs"]) == {4, 5}
        assert set(o["cond_frame_outputs"]) == {0}
    with pytest.raises(IndexError, match="only frames 3..5 are held"):
        seg.state["images"][0]
    seg.reset()
    with pytest.raises(ValueError, match="needs a Prompt"):
        seg.segment(clip)


def test_frame_size_must_stay_the_same(clip):
    seg = _random_sam2()
    seg.segment(clip[:1], prompt=Prompt(box=[5, 5, 40, 40]))
    with pytest.raises(ValueError, match="call reset"):
        seg.segment(np.zeros((1, H, W + 16, 3), np.uint8))


def test_missing_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("sam2", reason="the optional sam2 package is not installed")
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(SegmenterUnavailable, match=f"{CHECKPOINT_ENV}.*'residual'"):
        get_segmenter("sam2")
    missing = tmp_path / "sam2.1_hiera_tiny.pt"
    with pytest.raises(SegmenterUnavailable, match=f"tried {missing}"):
        get_segmenter("sam2", checkpoint=str(missing))
    broken = tmp_path / "sam2.1_hiera_tiny.pt"  # a released file name: its config is known, the file is not
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(SegmenterUnavailable, match=r"could not build configs/sam2.1/sam2.1_hiera_t.yaml from .*tiny"):
        get_segmenter("sam2", checkpoint=str(broken), device="cpu")
    odd = tmp_path / "my_model.pt"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match="pass config="):
        get_segmenter("sam2", checkpoint=str(odd))


def test_without_the_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sam2", None)  # how Python marks a package as not importable
    with pytest.raises(SegmenterUnavailable, match="`sam2` package is not installed.*'residual'"):
        get_segmenter("sam2", random_init=True)


def test_factory_and_prompt_errors():
    with pytest.raises(ValueError, match="unknown segmentation backend 'sam3'.*residual"):
        get_segmenter("sam3")
    assert set(available_segmenters()) == {"residual", "masks", "sam2"}
    with pytest.raises(ValueError, match="needs points, a box or a mask"):
        Prompt()
    with pytest.raises(ValueError, match="labels must be"):
        Prompt(points=[[1, 2]], labels=[3])
    with pytest.raises(ValueError, match="x1 > x0"):
        Prompt(box=[10, 10, 5, 20])
    with pytest.raises(ValueError, match="either a mask or points"):
        Prompt(mask=np.ones((2, 2), bool), box=[0, 0, 1, 1])
