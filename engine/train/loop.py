"""The training loop shared by every schedule: AdamW, warm-up + cosine, clipping, EMA, checkpoints with exact resume.

A schedule (VAE, DiT from scratch, stage 1 control-only, stage 2 LoRA) supplies a model, a dataset and a loss
function; this module owns everything else. Determinism is by construction so that a resumed run, and a run split
across DistributedDataParallel ranks, reproduce a single uninterrupted run:
- the data order is a permutation drawn per epoch from the seed, and the position in it is checkpointed;
- every sample carries its own seed (from run seed, epoch and position), so random draws inside the loss (flow
  time, noise, condition dropping) do not depend on which rank or worker computed them;
- optimizer, scheduler, EMA and the process RNG states are checkpointed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, default_collate

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 8  # global batch: split evenly across DDP ranks
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at `steps`
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ckpt_every: int = 100
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    mixed_precision: bool = True  # bf16 autocast where the hardware has it (CUDA); a no-op on CPU


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # index into the epoch's permutation of the next sample
    history: list[dict] = field(default_factory=list)  # logged scalars, one dict per log interval


def sample_seed(run_seed: int, epoch: int, position: int) -> int:
    """A per-sample seed that depends only on where the sample sits in the global data order."""
    return int(np.random.SeedSequence([run_seed, epoch, position]).generate_state(1, np.uint64)[0] >> 1)


def per_sample_generators(seeds: torch.Tensor, device: torch.device | str = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds.tolist()]


class EMA:
    """Exponential moving average of trainable parameters, kept in fp32 beside the model."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm-up of the decay so early EMA weights are not dominated by the random init
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Runs `settings.steps` optimisation steps of `loss_fn(model, batch)` over `dataset`, resumable from `out_dir`."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        dataset: Dataset,
        settings: TrainSettings,
        out_dir: str | Path,
        parameters: list[nn.Parameter] | None = None,
        on_checkpoint: Callable[["Trainer"], None] | None = None,
        device: str | torch.device = "cpu",
        find_unused_parameters: bool = False,
    ):
        self.settings, self.dataset, self.loss_fn = settings, dataset, loss_fn
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.rank, self.world = _rank_world()
        if settings.batch_size % self.world:
            raise ValueError(f"batch_size {settings.batch_size} does not split over {self.world} ranks")
        self.model = model.to(self.device)
        params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters")
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.ema = EMA(model, settings.ema_decay)
        self.state = TrainState()
        self.on_checkpoint = on_checkpoint
        self.ddp = None
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=find_unused_parameters)
        self.resume()

    # ------------------------------------------------------------------ schedule and data order
    def _lr_factor(self, step: int) -> float:
        s = self.settings
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.settings.seed, epoch]).permutation(len(self.dataset))

    def _next_batch(self) -> dict:
        """The rank's share of the next global batch; advances the (epoch, position) cursor for all ranks alike."""
        st, n = self.state, len(self.dataset)
        local = self.settings.batch_size // self.world
        items = []
        for j in range(self.settings.batch_size):
            if st.position >= n:
                st.epoch, st.position = st.epoch + 1, 0
            if j // local == self.rank:
                index = int(self._permutation(st.epoch)[st.position])
                item = self.dataset[index]
                item["sample_seed"] = torch.tensor(sample_seed(self.settings.seed, st.epoch, st.position))
                items.append(item)
            st.position += 1
        batch = default_collate(items)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save(self) -> None:
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "state": asdict(self.state),
            "settings": asdict(self.settings),
            "rng": torch.get_rng_state(),
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: a crash mid-write leaves the previous checkpoint
        if self.on_checkpoint:
            self.on_checkpoint(self)

    def resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        try:
            payload = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise RuntimeError(f"cannot resume: checkpoint {self.checkpoint_path} is unreadable ({e})") from e
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.ema.load_state_dict(payload["ema"])
        self.state = TrainState(**payload["state"])
        torch.set_rng_state(payload["rng"].cpu())
        return True

    # ------------------------------------------------------------------ the loop
    def train_step(self) -> dict[str, float]:
        s = self.settings
        self.model.train()
        batch = self._next_batch()
        use_amp = s.mixed_precision and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, logs = self.loss_fn(self.ddp or self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model, self.state.step)
        self.state.step += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0], **logs}

    def run(self, max_steps: int | None = None, time_budget_s: float | None = None, progress: bool = True) -> TrainState:
        """Train until `settings.steps` (or `max_steps` more steps, or the time budget); checkpoint on the way out."""
        from tqdm import tqdm

        s = self.settings
        target = s.steps if max_steps is None else min(s.steps, self.state.step + max_steps)
        t0 = time.monotonic()
        bar = tqdm(total=target, initial=self.state.step, disable=not progress or self.rank != 0, unit="step")
        window: list[dict] = []
        while self.state.step < target:
            logs = self.train_step()
            window.append(logs)
            bar.update(1)
            if self.state.step % s.log_every == 0 or self.state.step == target:
                mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                mean["step"] = self.state.step
                self.state.history.append(mean)
                bar.set_postfix(loss=f"{mean['loss']:.4f}")
                window = []
            if self.state.step % s.ckpt_every == 0:
                self.save()
            if time_budget_s is not None and time.monotonic() - t0 > time_budget_s:
                break
        bar.close()
        self.save()
        if self.rank == 0:
            plot_loss_curve(self.state.history, self.out_dir / "loss.png")
        return self.state

    def ema_model_state(self) -> dict[str, torch.Tensor]:
        """EMA weights cast back to the model's dtypes, ready to export."""
        ref = self.model.state_dict()
        return {k: v.to(ref[k].dtype) for k, v in self.ema.shadow.items()}


def plot_loss_curve(history: list[dict], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [k for k in history[0] if k.startswith("loss")]
    for k in keys:
        ax.plot(steps, [h.get(k, np.nan) for h in history], label=k)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
