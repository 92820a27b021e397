"""Generative models as the recipe orders them: plain L1 regression first, a critic only once
that works.

``l1`` — the generator alone, trained with the preset's loss (L1, or MSE for L2), judged as
``generalize`` judges any regression: the val loss must beat the best input-blind image. The
generator it trains is kept for the next stage; when it fails, the reason says that the
adversarial stage waits for it (a failing stage stops the ladder, so it never starts).

``adversarial`` — the ``l1`` stage's generator, warm, against a WGAN-GP critic (a small
conditional convolutional critic the ladder brings, like its baselines): each step updates
the critic ``n_critic`` times on ``D(fake) - D(real) + gp_weight · GP`` and then the
generator on ``l1_weight · L1 + adv_weight · (-D(fake))``. It is a custom training step of
the one loop (``engine/custom_step.py``), so its ``G``, ``D`` and ``W`` (the critic's
Wasserstein estimate) losses go to losses.bin and the app draws them. The verdict, from the
numbers on a fixed val batch before and after and from the curves:

- losses diverging (non-finite, or the critic's estimate or G's loss growing tenfold);
- collapse to one output (the generated images vary across inputs far less than real ones);
- the critic overpowering the generator (it still separates generated from real images by
  several standard deviations of its scores at the end);
- the reconstruction wrecked (val L1 grew past ``l1_tolerance`` × the l1 stage's);
- and otherwise whether the images came closer to real ones (the distribution of pixel
  values, the texture) — a pass — or the critic changed nothing measurable (a warning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.context import RunContext, UserCodeError
from engine.custom_step import Optimizers, UserStep
from engine.loop import train_loop, train_mode
from engine.stages.base import Check, Stage, Verdict, fmt, from_checks
from engine.stages.common import collate, head_mean, tail_mean
from engine.stages.generalize import GeneralizeStage

_GENERATORS: dict[str, dict[str, torch.Tensor]] = {}
"""The generator each run's l1 stage trained (by run folder), for its adversarial stage."""

REGRESSION_LOSSES = ("L1Loss", "MSELoss", "SmoothL1Loss", "HuberLoss")


class L1Stage(GeneralizeStage):
    name = "l1"

    def run(self, ctx: RunContext) -> Verdict:
        loss = type(ctx.loss_fn).__name__
        if ctx.custom is not None or loss not in REGRESSION_LOSSES:
            reason = (
                f"the l1 stage trains the generator alone with an L1 or L2 loss (the preset's is "
                f"{loss}{', through a custom step' if ctx.custom is not None else ''}): set "
                "task: regression and loss: {_target_: torch.nn.L1Loss}"
            )
            return Verdict("fail", reason, [Check("regression_loss", "fail", reason)])
        built: list[nn.Module] = []
        build = ctx.build_model

        def keep_first() -> nn.Module:
            model = build()
            built.append(model)
            return model

        ctx.build_model = keep_first  # this stage's own view of the run: the first build trains
        verdict = super().run(ctx)
        if verdict.status == "pass" and built:
            state = {k: v.detach().clone() for k, v in built[0].state_dict().items()}
            _GENERATORS[str(ctx.folder.path)] = state
        elif verdict.status == "fail":
            verdict.reason += (
                " — the adversarial stage starts only once this plain regression passes"
            )
        else:
            verdict.reason += " — the adversarial stage needs this stage to pass, not warn"
        return verdict


# ---------------------------------------------------------------- the critic and its step


class Critic(nn.Module):
    """A small conditional WGAN critic: (condition, image) -> one score per sample. No
    normalisation layers (the gradient penalty is per sample)."""

    def __init__(self, cond_channels: int, image_channels: int, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(cond_channels + image_channels, w, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, 1),
        )
        self.conditional = cond_channels > 0

    def forward(self, cond: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([cond, image], dim=1) if self.conditional else image
        return self.net(x).squeeze(1)


def gradient_penalty(D: nn.Module, cond, real, fake) -> torch.Tensor:
    """WGAN-GP: (‖∇ D(cond, mix)‖ - 1)² at random points between real and fake images."""
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(cond, mix).sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def wgan_gp_step(
    models,
    batch,
    optimizers=None,
    update=None,
    *,
    loss_fn,
    l1_weight: float,
    adv_weight: float,
    gp_weight: float,
    n_critic: int,
):
    """One step of critic and generator; for the val batch (no optimizers) the L1 alone.
    ``update`` is the loop's own backward + clip + step."""
    G, D = models["G"], models["D"]
    x, real = batch
    fake = G(x)
    l1 = loss_fn(fake, real)
    if optimizers is None:
        return {"loss": l1}
    for _ in range(n_critic):
        d_real = D(x, real).mean()
        d_fake = D(x, fake.detach()).mean()
        gp = gradient_penalty(D, x, real, fake.detach())
        d_loss = d_fake - d_real + gp_weight * gp
        update(d_loss, optimizers["D"], D.parameters())
    g_adv = -D(x, fake).mean()
    update(l1_weight * l1 + adv_weight * g_adv, optimizers["G"], G.parameters())
    return {"loss": l1, "G": g_adv, "D": d_loss, "W": (d_real - d_fake).detach()}


# ---------------------------------------------------------------- measurements


@dataclass
class Look:
    """The generator and critic on a fixed val batch."""

    l1: float  # the preset's loss over the whole val set
    separation: float  # (mean D(real) - mean D(fake)) / their pooled spread
    pixels: float  # 1-D Wasserstein distance between fake and real pixel values
    texture: float  # neighbouring-pixel differences, fake / real
    diversity: float  # spread across samples, fake / real


@torch.no_grad()
def look(ctx: RunContext, G: nn.Module, D: nn.Module, probe: tuple) -> Look:
    x, real = probe
    was = G.training, D.training
    G.eval()
    D.eval()
    fake = G(x).float()
    real = real.float()
    d_r, d_f = D(x, real), D(x, fake)
    spread = math.sqrt((float(d_r.var()) + float(d_f.var())) / 2) + 1e-8
    separation = (float(d_r.mean()) - float(d_f.mean())) / spread
    pixels = float((fake.flatten().sort().values - real.flatten().sort().values).abs().mean())
    texture = _roughness(fake) / max(_roughness(real), 1e-12)
    diversity = float(fake.std(0).mean()) / max(float(real.std(0).mean()), 1e-12)
    total, n = 0.0, 0
    for bx, by in ctx.val_loader():
        bx, by = bx.to(ctx.device), by.to(ctx.device)
        total += float(ctx.loss_fn(G(bx), by)) * len(bx)
        n += len(bx)
    G.train(was[0])
    D.train(was[1])
    return Look(total / max(n, 1), separation, pixels, texture, diversity)


def _roughness(t: torch.Tensor) -> float:
    dy = (t[..., 1:, :] - t[..., :-1, :]).abs().mean()
    dx = (t[..., :, 1:] - t[..., :, :-1]).abs().mean()
    return float(dx + dy)


# ---------------------------------------------------------------- the stage


class AdversarialStage(Stage):
    name = "adversarial"

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        before_stage = ctx.verdicts.get(s.after)
        if before_stage is None:
            reason = (
                f"the adversarial stage runs only after the {s.after} stage passed in the same "
                f"run (plain regression first, the critic once that works): add it before, e.g. "
                f"--stages {s.after},adversarial"
            )
            return Verdict("fail", reason, [Check("regression_first", "fail", reason)])
        if before_stage.status != "pass":
            reason = (
                f"not started: the {s.after} stage did not pass ({before_stage.status}: "
                f"{before_stage.reason}) — the recipe adds the critic only once plain regression works"
            )
            return Verdict("fail", reason, [Check("regression_first", "fail", reason)])
        state = _GENERATORS.get(str(ctx.folder.path))
        G = ctx.build_model()
        if state is not None:
            G.load_state_dict(state)
        n = min(s.probe, len(ctx.data.val))
        probe = collate(ctx.data.val, list(range(n)), "val")
        probe = tuple(t.to(ctx.device) for t in probe)
        x, y = probe
        if not (y.is_floating_point() and y.ndim == 4):
            raise UserCodeError(
                f"the adversarial stage needs image targets (batch, channels, height, width) of "
                f"floats; the targets are {tuple(y.shape)} {y.dtype}"
            )
        conditional = x.ndim == 4 and x.is_floating_point() and x.shape[2:] == y.shape[2:]
        ctx.seed_everything(1)
        D = Critic(x.shape[1] if conditional else 0, y.shape[1], s.critic_width).to(ctx.device)
        models = nn.ModuleDict({"G": G, "D": D})
        optimizers = Optimizers(
            {
                "G": ctx.build_optimizer(G),
                "D": torch.optim.Adam(D.parameters(), lr=s.critic_lr, betas=(0.5, 0.9)),
            }
        )
        step = UserStep(
            "step",
            fn=wgan_gp_step,
            kwargs={
                "loss_fn": ctx.loss_fn,
                "l1_weight": s.l1_weight,
                "adv_weight": s.adv_weight,
                "gp_weight": s.gp_weight,
                "n_critic": s.n_critic,
            },
            what="the WGAN-GP step",
            several=True,
            device=ctx.device,
        )
        before = look(ctx, G, D, probe)
        seps: list[tuple[int, float]] = []

        def every(at: int) -> None:
            seps.append((at, look(ctx, G, D, probe).separation))

        result = train_loop(
            ctx,
            models,
            optimizers,
            ctx.train_batches(),
            steps=s.steps,
            seconds=s.seconds,
            val_batches=ctx.val_batches(),
            val_every=s.val_every,
            every=every,
            every_n=s.eval_every,
            custom=step,
        )
        train_mode(models)
        after = look(ctx, G, D, probe)
        curves = {k: [r.losses.get(k, math.nan) for r in result.rows if r.losses] for k in "GDW"}
        checks, metrics = judge(before, after, curves, result, s)
        metrics.update(steps=result.steps, seconds=result.seconds, warm=float(state is not None))
        ok = (
            f"generator and critic in balance after {result.steps} steps: val L1 "
            f"{fmt(before.l1)} → {fmt(after.l1)}, pixel-value distance to real images "
            f"{fmt(before.pixels)} → {fmt(after.pixels)}, texture {fmt(before.texture)} → "
            f"{fmt(after.texture)} of real's, critic separation {after.separation:.1f} sd"
        )
        return from_checks(checks, metrics, ok)


def judge(before: Look, after: Look, curves: dict[str, list[float]], result, s) -> tuple:
    """(checks, metrics) of the adversarial stage from its measurements — the words for what
    goes wrong when a critic joins."""
    metrics: dict[str, float] = {
        "l1_before": before.l1,
        "l1_after": after.l1,
        "separation_before": before.separation,
        "separation_after": after.separation,
        "pixel_distance_before": before.pixels,
        "pixel_distance_after": after.pixels,
        "texture_before": before.texture,
        "texture_after": after.texture,
        "diversity_after": after.diversity,
        "wasserstein_last": tail_mean(curves.get("W", [])),
    }
    checks: list[Check] = []
    if result.stopped == "nonfinite":
        what = {"D": "critic's loss", "G": "generator's adversarial loss", "W": "critic's estimate"}
        name = what.get(result.nonfinite_what, f"loss '{result.nonfinite_what}'")
        checks.append(
            Check(
                "losses_finite",
                "fail",
                f"losses diverging: the {name} became non-finite at step {result.nonfinite_step} "
                f"— lower critic_lr (now {s.critic_lr:g}) and the preset's learning rate, or "
                f"raise gp_weight (now {s.gp_weight:g})",
            )
        )
        return checks, metrics
    for key, who in (("W", "the critic's Wasserstein estimate"), ("G", "the generator's loss")):
        xs = [abs(v) for v in curves.get(key, []) if math.isfinite(v)]
        if len(xs) < 10:
            continue
        k = max(3, len(xs) // 10)
        head, tail = head_mean(xs, k), tail_mean(xs, k)
        if tail > s.diverge * (head + 1.0):
            checks.append(
                Check(
                    "losses_stable",
                    "fail",
                    f"losses diverging: {who} grew from {fmt(head)} (first {k} steps) to "
                    f"{fmt(tail)} (last {k}) — lower both learning rates, or raise gp_weight "
                    f"(now {s.gp_weight:g})",
                )
            )
            return checks, metrics
    checks.append(
        Check("losses_stable", "pass", "the critic's and the generator's losses stay bounded")
    )
    if after.diversity < s.collapse:
        checks.append(
            Check(
                "no_collapse",
                "fail",
                f"collapse to one output: the generated images vary across inputs "
                f"{after.diversity:.2f}× as much as real ones (limit {s.collapse:g}) — the "
                f"generator found one image the critic accepts; raise l1_weight (now "
                f"{s.l1_weight:g}) or n_critic, or lower the preset's learning rate",
            )
        )
    else:
        checks.append(
            Check(
                "no_collapse", "pass", f"outputs vary {after.diversity:.2f}× as much as real ones"
            )
        )
    if after.separation > s.overpower:
        checks.append(
            Check(
                "critic_balance",
                "fail",
                f"the critic overpowers the generator: at the end it tells generated from real "
                f"images by {after.separation:.1f} standard deviations of its scores (limit "
                f"{s.overpower:g}; {before.separation:.1f} at the start) — lower critic_lr (now "
                f"{s.critic_lr:g}) or n_critic (now {s.n_critic}), or raise adv_weight (now "
                f"{s.adv_weight:g})",
            )
        )
    else:
        checks.append(
            Check(
                "critic_balance",
                "pass",
                f"the critic separates real from generated by {after.separation:.1f} sd at the end",
            )
        )
    if after.l1 > s.l1_tolerance * before.l1:
        checks.append(
            Check(
                "reconstruction_kept",
                "fail",
                f"the adversarial term wrecks the reconstruction: val L1 {fmt(before.l1)} → "
                f"{fmt(after.l1)}, more than {s.l1_tolerance:g}× the l1 stage's — lower "
                f"adv_weight (now {s.adv_weight:g})",
            )
        )
    else:
        checks.append(
            Check("reconstruction_kept", "pass", f"val L1 {fmt(before.l1)} → {fmt(after.l1)}")
        )
    closer = after.pixels < (1 - s.min_gain) * before.pixels or abs(after.texture - 1) < (
        1 - s.min_gain
    ) * abs(before.texture - 1)
    if closer:
        checks.append(
            Check(
                "closer_to_real",
                "pass",
                f"the images came closer to real ones: pixel-value distance {fmt(before.pixels)} "
                f"→ {fmt(after.pixels)}, texture {fmt(before.texture)} → {fmt(after.texture)} of real's",
            )
        )
    else:
        checks.append(
            Check(
                "closer_to_real",
                "warn",
                f"the critic changed nothing measurable: pixel-value distance "
                f"{fmt(before.pixels)} → {fmt(after.pixels)}, texture {fmt(before.texture)} → "
                f"{fmt(after.texture)} of real's — raise adv_weight (now {s.adv_weight:g}) or "
                "adversarial.steps",
            )
        )
    return checks, metrics
