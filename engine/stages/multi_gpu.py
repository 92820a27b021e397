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

import torch

from engine import ddp
from engine.context import RunContext, Stopped
from engine.loop import move
from engine.stages.base import Check, Stage, Verdict, fmt
from engine.stages.common import switch_off_regularizers

IDENTICAL = 1e-6  # relative: DDP applies the same averaged gradient everywhere, so ~0 is expected


class MultiGpuStage(Stage):
    name = "multi_gpu"

    def run(self, ctx: RunContext) -> Verdict:
        s = self.settings
        world = ddp.world_size(ctx.preset)
        if world < 2:
            return Verdict(
                "skip",
                "the preset asks for one GPU, so there is no DDP to check; set gpus: 2 or more",
            )
        result = ddp.run_stage(ctx, self.name)
        if result.get("status") == "crashed":
            return ddp.crash_verdict(result)
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

    def reference(self, ctx: RunContext, world: int) -> tuple[list[float], float]:
        """One process on the same global batches, and its samples per second on one shard."""
        s = self.settings
        device = ctx.device
        bn_eval = ctx.bn_eval
        with ddp.exact_math(device):
            model = ctx.build_model()
            switch_off_regularizers(ctx, model)
            optimizer = ctx.build_optimizer(model)
            model.train()
            ctx.set_bn_eval_if_requested(model)
            shards = ddp.CheckBatches(ctx, world)
            grad_clip = ctx.preset.get("grad_clip")
            losses = []
            for t in range(s.steps):
                if ctx.stop_requested:
                    raise Stopped()
                x, y = move(shards.whole(t), device)
                loss = ctx.loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                losses.append(loss.detach())
            trajectory = torch.stack(losses).double().tolist()
            timing = itertools.cycle([move(shards.shard(t, 0), device) for t in range(4)])

            def step() -> None:
                x, y = next(timing)
                optimizer.zero_grad(set_to_none=True)
                ctx.loss_fn(model(x), y).backward()
                optimizer.step()

            sps = ddp.timed_samples_per_s(step, shards.batch, s.batches, device)
        ctx.bn_eval = bn_eval
        return trajectory, sps
