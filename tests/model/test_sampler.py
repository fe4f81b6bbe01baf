"""The flow-matching sampler: schedule, accuracy on flows with known solutions, clean conditions, CFG, callbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import micro

from engine.model.dit import SpatiaDiT
from engine.model.sampler import SamplingCancelled, flow_sigmas, sample, shift_sigmas


class GaussianFlow(nn.Module):
    """Exact velocity of the rectified flow from N(mu, sd^2) data (per element) to N(0, 1) noise.

    x_s = (1 - s) x0 + s n has std(s) = sqrt((1-s)^2 sd^2 + s^2); the probability-flow ODE moves quantiles:
    x(s) = (1 - s) mu + std(s) z, so x(0) = mu + sd * x(1). Same call signature and output layout as SpatiaDiT."""

    def __init__(self, mu: float, sd: float):
        super().__init__()
        self.mu, self.sd = mu, sd
        self.anchor = nn.Parameter(torch.zeros(1))  # the sampler reads device/dtype from the parameters
        self.calls: list[dict] = []

    def forward(self, x, t, refs=None, control=None, text=None, control_scale=None, history_frames=None, cache=None):
        self.calls.append(dict(x=x.clone(), t=t.clone(), refs=refs, control=control, text=text))
        s = t.double()[:, None, :, None, None]  # [B, 1, F, 1, 1]
        std = torch.sqrt((1 - s) ** 2 * self.sd**2 + s**2)
        z = (x.double() - (1 - s) * self.mu) / std
        v = -self.mu + (s - (1 - s) * self.sd**2) / std * z
        k = 0 if refs is None else refs.shape[2]
        return torch.cat([x.new_zeros(x.shape[0], x.shape[1], k, *x.shape[3:]), v.float()], dim=2)


def test_schedule():
    s = flow_sigmas(4, 1.0)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = flow_sigmas(4, 5.0)
    torch.testing.assert_close(shifted, 5 * s / (1 + 4 * s))
    assert shifted[0] == 1 and shifted[-1] == 0 and torch.all(shifted[:-1] > shifted[1:])
    assert torch.all(shift_sigmas(s[1:-1], 3.0) > s[1:-1])  # shift > 1 spends more steps at high noise
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0, 1.0)


def _solve(solver: str, steps: int, shift: float = 1.0) -> float:
    cfg = micro("tiny")
    flow = GaussianFlow(mu=0.7, sd=0.3)
    noise = torch.randn(2, cfg.latent_channels, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    out = sample(flow, cfg, noise=noise, steps=steps, solver=solver, shift=shift, guidance=1.0)
    return (out - (0.7 + 0.3 * noise)).abs().max().item()


def test_solvers_integrate_a_known_flow():
    assert _solve("dpmpp_2m", 16) < 0.01
    assert _solve("euler", 64) < 0.06
    assert _solve("dpmpp_2m", 8) < 0.6 * _solve("euler", 8)  # second order beats first order
    assert _solve("euler", 32) < 0.6 * _solve("euler", 16)  # and Euler converges


def test_euler_is_exact_for_a_point_mass():
    # Data at one point x0: v(x, s) = (x - x0) / s is constant along straight paths, so Euler is exact.
    cfg = micro("tiny")

    class PointFlow(GaussianFlow):
        def forward(self, x, t, refs=None, **kw):
            return (x - self.mu) / t[:, None, :, None, None]

    noise = torch.randn(1, cfg.latent_channels, 2, 4, 4)
    out = sample(PointFlow(0.25, 0.0), cfg, noise=noise, steps=3, solver="euler", shift=4.0, guidance=1.0)
    torch.testing.assert_close(out, torch.full_like(out, 0.25), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["full", "context"])
def test_references_and_history_stay_clean(layout):
    cfg = micro("tiny", attention_layout=layout)
    dit = SpatiaDiT(cfg).eval()
    seen = []
    dit.register_forward_hook(lambda m, args, kwargs, out: seen.append((args, kwargs)), with_kwargs=True)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    history = torch.randn(1, c, 1, h, w)
    refs = torch.randn(1, c, 2, h, w)
    control = torch.randn(1, 2 * c, 3, h, w)
    out = sample(dit, cfg, history=history, refs=refs, control=control, steps=3, seed=0, guidance=1.0)
    assert out.shape == (1, c, 2, h, w)
    assert len(seen) == 3
    for i, (args, kwargs) in enumerate(seen):
        x, t = args
        if layout == "context" and i > 0:  # later steps: targets only, the context comes from the filled cache
            assert x.shape[2] == 2 and kwargs.get("refs") is None and kwargs["cache"].filled
            assert kwargs["control"].shape[2] == 2 and torch.all(t > 0)
            continue
        assert torch.equal(x[:, :, :1], history)  # history re-enters clean on every step
        assert torch.equal(kwargs["refs"], refs)
        assert torch.all(t[:, :1] == 0) and torch.all(t[:, 1:] > 0)


class _NoCache(torch.nn.Module):
    """The DiT with the context cache hidden: every step recomputes the context."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    def forward(self, *args, cache=None, **kwargs):
        return self.dit(*args, **kwargs)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_context_cache_gives_the_uncached_result(guidance):
    cfg = micro("tiny", attention_layout="context")
    torch.manual_seed(0)
    dit = SpatiaDiT(cfg).eval()
    for p in dit.parameters():  # the zero-initialised control projections too, so every path matters
        p.data += 0.02 * torch.randn_like(p)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    kw = dict(history=torch.randn(1, c, 1, h, w), refs=torch.randn(1, c, 2, h, w),
              control=torch.randn(1, 2 * c, 3, h, w), steps=3, seed=0, guidance=guidance)
    cached, plain = sample(dit, cfg, **kw), sample(_NoCache(dit), cfg, **kw)
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=1e-4)
    assert not cached.requires_grad  # sampling never builds an autograd graph, whoever calls it


def test_guidance_passes_and_drops():
    cfg = micro("spatia-5b")
    flow = GaussianFlow(0.0, 1.0)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    refs, text, neg = torch.randn(1, c, 2, h, w), torch.randn(1, 5, cfg.text_dim), torch.randn(1, 5, cfg.text_dim)
    sample(flow, cfg, refs=refs, text=text, text_uncond=neg, steps=2, guidance=1.0, seed=0)
    assert len(flow.calls) == 2
    flow.calls.clear()
    sample(flow, cfg, refs=refs, text=text, text_uncond=neg, steps=2, guidance=3.0, cfg_drop="text", seed=0)
    assert len(flow.calls) == 4
    cond, uncond = flow.calls[0], flow.calls[1]
    assert cond["text"] is text and uncond["text"] is neg and uncond["refs"] is refs
    flow.calls.clear()
    sample(flow, cfg, refs=refs, text=text, steps=2, guidance=3.0, cfg_drop="text+refs", seed=0)
    assert flow.calls[1]["refs"] is None and flow.calls[1]["text"] is None


def test_guidance_combines_velocities():
    """v = v_u + g (v_c - v_u): with the references as the only difference, one Euler step shows it."""
    cfg = micro("tiny")

    class RefShift(GaussianFlow):
        def forward(self, x, t, refs=None, **kw):
            k = 0 if refs is None else refs.shape[2]
            v = torch.full_like(x, 1.0 if refs is not None else 0.0)
            return torch.cat([x.new_zeros(x.shape[0], x.shape[1], k, *x.shape[3:]), v], dim=2)

    noise = torch.zeros(1, cfg.latent_channels, 2, 4, 4)
    refs = torch.zeros(1, cfg.latent_channels, 1, 4, 4)
    out = sample(RefShift(0, 1), cfg, noise=noise, refs=refs, steps=1, solver="euler", guidance=2.5, cfg_drop="refs")
    torch.testing.assert_close(out, torch.full_like(out, -2.5))  # x = 0 + (0 - 1) * (0 + 2.5 * (1 - 0))


def test_seed_callback_and_cancel():
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg).eval()
    a = sample(dit, cfg, steps=2, seed=7)
    b = sample(dit, cfg, steps=2, seed=7)
    c = sample(dit, cfg, steps=2, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    infos = []
    sample(dit, cfg, steps=3, seed=0, callback=infos.append)
    assert [i.step for i in infos] == [0, 1, 2] and infos[-1].sigma_next == 0 and infos[0].step_ms > 0
    with pytest.raises(SamplingCancelled) as err:
        sample(dit, cfg, steps=4, seed=0, callback=lambda info: info.step == 1)
    assert err.value.step == 2


def test_bad_arguments_are_named():
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg).eval()
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    with pytest.raises(ValueError, match="control covers 4 latent frames"):
        sample(dit, cfg, history=torch.randn(1, c, 1, h, w), control=torch.randn(1, 2 * c, 4, h, w), target_frames=2)
    with pytest.raises(ValueError, match="unknown solver"):
        sample(dit, cfg, solver="rk45")
    with pytest.raises(ValueError, match="noise must be"):
        sample(dit, cfg, noise=torch.randn(1, c, 5, 3, 3), target_frames=2)
