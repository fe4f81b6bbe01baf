"""The generic training loop: loss falls, resume is bit-exact, and a two-rank gloo run equals one process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from engine.train.loop import Trainer, TrainSettings, per_sample_generators


class Regression(torch.utils.data.Dataset):
    """y = A x + noise, with a fixed A: a real (if small) learning problem."""

    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(4, 8, generator=g)
        self.x = torch.randn(n, 8, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.A @ self.x[i]}


def loss_fn(model, batch):
    gens = per_sample_generators(batch["sample_seed"])
    # per-sample noise makes the draw independent of which rank holds the sample
    noise = torch.stack([torch.randn(4, generator=g) for g in gens]) * 0.01
    loss = ((model(batch["x"]) - batch["y"] - noise) ** 2).mean()
    return loss, {}


def make_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


SETTINGS = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, ckpt_every=4, log_every=2, ema_decay=0.9)


def test_loss_falls_and_curve_written(tmp_path):
    trainer = Trainer(make_model(), loss_fn, Regression(), TrainSettings(**{**SETTINGS, "steps": 150}), tmp_path)
    state = trainer.run(progress=False)
    assert state.step == 150
    assert state.history[-1]["loss"] < state.history[0]["loss"] / 10
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "checkpoint.pt").exists()


def test_resume_is_bit_exact(tmp_path):
    straight = Trainer(make_model(), loss_fn, Regression(), TrainSettings(**SETTINGS), tmp_path / "a")
    straight.run(progress=False)

    first = Trainer(make_model(), loss_fn, Regression(), TrainSettings(**SETTINGS), tmp_path / "b")
    first.run(max_steps=5, progress=False)  # stops mid-epoch, between checkpoints
    resumed = Trainer(make_model(), loss_fn, Regression(), TrainSettings(**SETTINGS), tmp_path / "b")
    assert resumed.state.step == 5
    resumed.run(progress=False)

    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    for k, a in straight.ema.shadow.items():
        torch.testing.assert_close(a, resumed.ema.shadow[k], rtol=0, atol=0)


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="checkpoint.*unreadable"):
        Trainer(make_model(), loss_fn, Regression(), TrainSettings(**SETTINGS), tmp_path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(make_model(), loss_fn, Regression(), TrainSettings(**SETTINGS), out_dir)
        trainer.run(progress=False)
        if rank == 0:
            torch.save(trainer.model.state_dict(), out_dir / "final.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_with_one_process(tmp_path):
    single = Trainer(make_model(), loss_fn, Regression(), TrainSettings(**SETTINGS), tmp_path / "single")
    single.run(progress=False)

    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, tmp_path / "ddp")) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    state = torch.load(tmp_path / "ddp" / "final.pt")
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6, msg=k)
