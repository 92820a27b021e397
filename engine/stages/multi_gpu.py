"""multi_gpu: DDP keeps its ranks identical, matches one process on the same global batch, and
scales.

The preset's model, loss and optimizer take ``steps`` steps twice on the same global batches
(N shards of batch_size): under DDP on N processes launched by torchrun, exactly as training
would be, and here in one process on the whole global batch (which must fit on one device).
Regularizers are off in both (dropout draws differ per rank, batch statistics per shard) and so
is TF32 on GPUs. The verdict:

- every rank's parameters are identical afterwards (what DDP promises);
- the two loss trajectories agree within ``tolerance`` (relative): a loss summed instead of
  averaged, or a rank-dependent step, shows up here;
- throughput of N ranks against one process on one shard, as scaling and efficiency (reported,
  not judged: a small model on CPU cores does not scale, and that is no bug).
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from engine.context import RunContext
from engine.data import move
from engine.loop import TrainStep, train_loop
from engine.stages.base import Check, Stage, Verdict, fmt
from engine.stages.common import collate, switch_off_regularizers

if TYPE_CHECKING:
    from engine.distributed.rank import Ranks

IDENTICAL = 1e-6  # relative: DDP applies the same averaged gradient everywhere, so ~0 is expected


class MultiGpuStage(Stage):
    name = "multi_gpu"
    distributed = True

    def run(self, ctx: RunContext) -> Verdict:
        return Verdict(
            "skip",
            "the preset asks for one GPU, so there is no DDP to check; set gpus: 2 or more",
        )

    def run_rank(self, ctx: RunContext, ranks: Ranks) -> dict | None:
        """The same steps under DDP; rank 0 returns the trajectory, fingerprints, throughput."""
        import torch.distributed as dist

        s = self.settings
        with exact_math(ctx.device):
            model, trajectory, step = self.trajectory(ctx, ranks.world, ranks)
            trajectory = torch.tensor(trajectory, dtype=torch.float64, device=ranks.comm_device)
            dist.all_reduce(trajectory)  # equal shards, mean-reduced loss: the global batch's loss
            trajectory /= ranks.world
            mine = fingerprint(model).to(ranks.comm_device)
            everyone = [torch.empty_like(mine) for _ in range(ranks.world)]
            dist.all_gather(everyone, mine)
            shards = CheckBatches(ctx, ranks.world)
            sps = timed_samples_per_s(
                step, shards.batch * ranks.world, s.batches, ctx.device, dist.barrier
            )
        if not ranks.lead:
            return None
        ref = everyone[0]
        gaps = torch.stack([(o - ref).abs() / ref.abs().clamp(min=1e-12) for o in everyone[1:]])
        per_param = gaps.amax(dim=(0, 2))
        names = [n for n, _ in model.named_parameters()]
        return {
            "status": "done",
            "backend": ranks.backend,
            "device": ctx.device.type,
            "global_batch": shards.batch * ranks.world,
            "losses": trajectory.tolist(),
            "param_max_diff": float(per_param.max()),
            "param_worst": names[int(per_param.argmax())],
            "samples_per_s": sps,
        }

    def from_ranks(self, ctx: RunContext, result: dict) -> Verdict:
        s = self.settings
        world = result["world"]
        reference, single_sps = self.reference(ctx, world)
        losses = result["losses"]
        gaps = [abs(a - b) / max(abs(b), 1e-8) for a, b in zip(losses, reference)]
        gap_step = max(range(len(gaps)), key=gaps.__getitem__)
        scaling = result["samples_per_s"] / single_sps
        where = f"{world} processes ({result['backend']} on {result['device']})"
        metrics = {
            "world_size": world,
            "global_batch": result["global_batch"],
            "steps": len(losses),
            "max_loss_gap": gaps[gap_step],
            "param_max_diff": result["param_max_diff"],
            "samples_per_s_single": single_sps,
            "samples_per_s_ddp": result["samples_per_s"],
            "scaling": scaling,
            "efficiency": scaling / world,
        }
        checks = []
        if result["param_max_diff"] <= IDENTICAL:
            checks.append(
                Check(
                    "ranks_identical",
                    "pass",
                    f"parameters identical on all {world} ranks after {len(losses)} steps",
                )
            )
        else:
            checks.append(
                Check(
                    "ranks_identical",
                    "fail",
                    f"parameters differ across ranks after {len(losses)} steps (relative {fmt(result['param_max_diff'])} "
                    f"in {result['param_worst']}): something changes them outside DDP's gradient sync, e.g. a "
                    "rank-dependent update or a parameter modified in place",
                )
            )
        if gaps[gap_step] <= s.tolerance:
            checks.append(
                Check(
                    "matches_single_process",
                    "pass",
                    f"loss trajectory matches one process on the same global batch of {result['global_batch']} "
                    f"(largest relative gap {fmt(gaps[gap_step])})",
                )
            )
        else:
            checks.append(
                Check(
                    "matches_single_process",
                    "fail",
                    f"DDP's loss drifts from one process on the same global batch: {fmt(losses[gap_step])} vs "
                    f"{fmt(reference[gap_step])} at step {gap_step + 1} (relative gap {fmt(gaps[gap_step])} > "
                    f"{fmt(s.tolerance)}); a loss with reduction='sum' makes DDP's averaged gradients 1/{world} "
                    "of one process's, and anything depending on the rank or the per-rank batch changes the math",
                )
            )
        scaling_text = f"throughput {scaling:.2f}× one process ({100 * scaling / world:.0f}% efficiency on {world})"
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            return Verdict("fail", failed[0].detail, checks, metrics)
        reason = (
            f"{where} stay identical and match one process (gap {fmt(gaps[gap_step])}); "
            f"{scaling_text}"
        )
        return Verdict("pass", reason, checks, metrics)

    def trajectory(self, ctx: RunContext, world: int, ranks: Ranks | None) -> tuple:
        """``steps`` steps of the preset's model on the check's batches: one process on each
        whole global batch, or this rank on its shard under DDP. Returns (model, losses, a
        timing step replaying four of this process's batches)."""
        s = self.settings
        model = ctx.build_model()
        switch_off_regularizers(ctx, model)  # dropout differs per rank, batch statistics per shard
        optimizer = ctx.build_optimizer(model)
        shards = CheckBatches(ctx, world)
        if ranks is None:
            batches = (shards.whole(t) for t in range(s.steps))
        else:
            batches = (shards.shard(t, ranks.rank) for t in range(s.steps))
        forward = ranks.wrap(model) if ranks else None
        result = train_loop(
            ctx,
            model,
            optimizer,
            batches,
            steps=s.steps,
            log=False,
            forward=forward,
            lockstep=ranks.lockstep() if ranks else None,
        )
        rank = ranks.rank if ranks else 0
        step = TrainStep(model, optimizer, ctx.loss_fn, device=ctx.device, forward=forward)
        timing = itertools.cycle([shards.shard(t, rank) for t in range(4)])
        return model, result.train_losses, lambda: step(move(next(timing), ctx.device))

    def reference(self, ctx: RunContext, world: int) -> tuple[list[float], float]:
        """One process on the same global batches, and its samples per second on one shard."""
        with exact_math(ctx.device):
            _, losses, step = self.trajectory(ctx, world, None)
            batch = ctx.preset.get("batch_size")
            return losses, timed_samples_per_s(step, batch, self.settings.batches, ctx.device)


@contextmanager
def exact_math(device: torch.device):
    """No TF32 while comparing DDP with one process: the check is about DDP, not precision."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class CheckBatches:
    """The same global batches for one process and for DDP: step t's batch cut into N shards."""

    def __init__(self, ctx: RunContext, world: int):
        self.data = ctx.data.train
        self.batch = ctx.preset.get("batch_size")
        self.world = world
        g = torch.Generator().manual_seed(ctx.seed + 7)
        self.order = torch.randperm(len(self.data), generator=g).tolist()

    def shard(self, step: int, rank: int) -> tuple:
        return self._take((step * self.world + rank) * self.batch, self.batch)

    def whole(self, step: int) -> tuple:
        """Step t's whole global batch: all N shards in rank order."""
        return self._take(step * self.world * self.batch, self.world * self.batch)

    def _take(self, start: int, size: int) -> tuple:
        n = len(self.order)
        return collate(self.data, [self.order[(start + j) % n] for j in range(size)])


def fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Per parameter: its sum and a fixed random projection (float64) — equal iff equal, in practice."""
    rows = []
    for i, p in enumerate(model.parameters()):
        w = torch.rand(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        d = p.detach().double()
        rows.append(torch.stack([d.sum(), (d * w.to(d.device)).sum()]))
    return torch.stack(rows)


def timed_samples_per_s(step, batch: int, n: int, device: torch.device, barrier=None) -> float:
    """Samples per second over ``n`` calls of ``step`` after two warm-up calls."""
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if barrier is not None:
        barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if barrier is not None:
        barrier()
    return batch * n / max(time.perf_counter() - t0, 1e-9)
