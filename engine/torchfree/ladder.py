"""The ladder's stages, their settings and defaults — torch-free.

The terminal app validates presets without importing torch, so each stage's settings live
here as a dataclass; the stage's code lives in ``engine/stages/<name>.py`` and is imported
only inside the engine process. Adding a stage: one settings class and one ``STAGES`` line
here, one module under ``engine/stages/``.

Every field carries a one-line ``doc``: ``settings_table()`` writes README's table of stage
settings from them (tests/test_docs.py keeps the two in step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class InitSettings:
    samples: int = _f(512, "train samples inspected for shapes, dtypes, ranges and imbalance")
    overlap_samples: int = _f(2000, "samples per split hashed to find train/val overlap")
    batches: int = _f(4, "batches averaged for the loss at init")
    max_params: int = _f(1_000_000, "warn above this many parameters: start simple")
    loss_tolerance: float = _f(
        0.5, "warn when the loss at init is off its expected value by more than this fraction"
    )
    imbalance_ratio: float = _f(
        3.0, "warn when the most frequent class outnumbers the rarest by more than this"
    )
    pixel_imbalance_ratio: float = _f(
        50.0, "the same for segmentation pixels, where background usually dominates"
    )
    val_samples: int = _f(256, "val samples read to compare their input statistics with train's")
    split_scale_warn: float = _f(
        2.0, "warn when val inputs spread this many times more (or less) than train's"
    )
    split_scale_fail: float = _f(4.0, "fail at this spread ratio between val and train inputs")
    split_shift_warn: float = _f(
        1.0, "warn when val means sit this many train spreads off (median unit)"
    )
    split_shift_fail: float = _f(3.0, "fail at this mean shift between val and train inputs")
    raw_scale: float = _f(
        20.0, "warn when a train feature or channel reaches |mean| + spread above this"
    )
    split_class_shift: float = _f(
        0.5, "warn when train's and val's class shares differ by this (total variation)"
    )
    tiny_scale: float = _f(
        0.01, "warn when every train feature or channel stays under |mean| + spread of this"
    )
    feature_scale_ratio: float = _f(
        1000.0, "warn when tabular feature spreads differ by more than this"
    )
    frozen_share: float = _f(0.1, "warn when at least this share of the parameters is frozen")
    dead_share: float = _f(
        0.5, "warn when a ReLU layer has at least this share of units dead at init"
    )
    saturated_share: float = _f(
        0.3, "warn when a tanh/sigmoid layer has this share of outputs saturated"
    )
    eval_tolerance: float = _f(
        1e-5, "largest relative difference allowed between two eval-mode passes"
    )


@dataclass(frozen=True)
class BatchIndependenceSettings:
    batch: int = _f(4, "samples in the probe batch")
    tolerance: float = _f(1e-6, "largest allowed leak, relative to the sample's own gradient")
    eval_tolerance: float = _f(
        1e-5, "largest relative difference allowed between two eval-mode passes"
    )


@dataclass(frozen=True)
class OverfitSettings:
    samples: int = _f(1, "train samples to memorise")
    steps: int = _f(300, "step budget")
    seconds: float = _f(
        600.0, "wall-time guard against hangs (the budget is steps); a stage it ends warns"
    )
    lr: float | None = _f(None, "learning rate (default: the preset's)")
    reach: float = _f(
        0.02, "pass once the loss is this close to its floor, as a fraction of the start's distance"
    )
    floor: float | None = _f(
        None, "the loss's lowest possible value (default: known for torch's losses, else 0)"
    )


@dataclass(frozen=True)
class OverfitFewSettings(OverfitSettings):
    samples: int = _f(8, "train samples to memorise (5–10 in the recipe)")
    steps: int = _f(400, "step budget")


@dataclass(frozen=True)
class GeneralizeSettings:
    steps: int = _f(400, "step budget on the full train set")
    seconds: float = _f(
        900.0, "wall-time guard against hangs (the budget is steps); a stage it ends warns"
    )
    val_every: int = _f(1, "a random val batch every this many steps")
    eval_every: int = _f(100, "full-val metrics every this many steps (and at both ends)")
    margin: float = _f(
        0.01,
        "val loss must beat the input-blind baseline's loss by this fraction, and by its noise",
    )
    confidence: float = _f(
        0.95, "confidence of the interval the val metric must clear above the baseline"
    )
    label_test: bool = _f(
        True, "when val fails, train as long on shuffled labels to test whether labels inform"
    )


@dataclass(frozen=True)
class SpeedSettings:
    batches: int = _f(30, "batches per measurement (data only, compute only, real loop)")
    seconds: float = _f(10.0, "wall-time cap per measurement")
    max_batch_s: float = _f(1.0, "fail when one batch of the real loop takes longer than this")
    data_bound: float = _f(0.3, "warn when the loop waits on data more than this share of the time")
    compare_precision: bool = _f(
        True, "also time compute under the other precisions (bf16, fp16 on GPUs) and say which"
    )
    compare_compile: bool = _f(False, "also time torch.compile (compiling takes a while: off)")


def is_data_bound(share: float, limit: float = SpeedSettings.data_bound) -> bool:
    """The one rule for "data-bound", in the speed stage's verdict and the app's GPU panel
    alike: the loop waits on the loader for more than ``limit`` of its time."""
    return share > limit


@dataclass(frozen=True)
class TrainSettings:
    steps: int = _f(1000, "steps to train (no early stop)")
    seconds: float | None = _f(None, "optional wall-time cap")
    val_every: int = _f(1, "a random val batch every this many steps (0: never)")
    eval_every: int = _f(200, "full-val metrics every this many steps (0: only at the end)")
    checkpoint_every: int = _f(500, "checkpoint every this many steps (0: only at the end)")


@dataclass(frozen=True)
class MultiGpuSettings:
    steps: int = _f(20, "steps compared between DDP and one process on the same global batch")
    tolerance: float = _f(1e-3, "largest relative gap between the two loss trajectories")
    batches: int = _f(20, "batches timed for the throughput scaling")


@dataclass(frozen=True)
class LrFindSettings:
    min_lr: float = _f(1e-5, "the sweep's first learning rate")
    max_lr: float = _f(1.0, "the sweep's last learning rate (it stops earlier at divergence)")
    steps: int = _f(150, "steps of one sweep, the learning rate growing exponentially")
    repeats: int = _f(3, "sweeps from different seeds, averaged: less noise in the curve")
    seconds: float = _f(
        600.0, "wall-time guard against hangs (the budget is steps); a sweep it cuts warns"
    )
    diverge: float = _f(4.0, "stop once the smoothed loss exceeds this multiple of its best")
    min_gap: float = _f(2.0, "suggest this factor below the smoothed loss minimum's rate")


@dataclass(frozen=True)
class AdversarialSettings:
    after: str = _f("l1", "the regression stage that must pass first (its generator starts here)")
    steps: int = _f(300, "steps of critic and generator together")
    seconds: float = _f(600.0, "wall-time guard against hangs (the budget is steps)")
    val_every: int = _f(5, "a random val batch (its L1) every this many steps")
    eval_every: int = _f(100, "the critic's separation on a fixed val batch every this many steps")
    probe: int = _f(128, "val samples of the fixed batch the verdict measures on")
    critic_width: int = _f(16, "channels of the ladder's WGAN critic")
    critic_lr: float = _f(3e-3, "the critic's Adam learning rate (betas 0.5, 0.9)")
    n_critic: int = _f(1, "critic updates per generator update")
    l1_weight: float = _f(100.0, "weight of the preset's (L1) loss in the generator's objective")
    adv_weight: float = _f(3.0, "weight of the adversarial term -D(fake)")
    gp_weight: float = _f(10.0, "weight of the gradient penalty (WGAN-GP)")
    diverge: float = _f(
        10.0, "fail when the size of W or of G's loss ends this many times its start (+1)"
    )
    collapse: float = _f(0.25, "fail when outputs vary less than this share of real images' spread")
    overpower: float = _f(
        3.0, "fail when the critic still separates real from fake by this many sd at the end"
    )
    l1_tolerance: float = _f(1.5, "fail when val L1 grows past this multiple of the l1 stage's")
    min_gain: float = _f(
        0.1, "pass when pixel distance or texture gap to real images shrank by this share"
    )


@dataclass(frozen=True)
class StageSpec:
    """A stage as the preset and the engine see it."""

    name: str
    settings: type
    impl: str  # "module:Class", imported only inside the engine
    summary: str


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in [
        StageSpec(
            "init",
            InitSettings,
            "engine.stages.init:InitStage",
            "data sanity, val determinism, train/val overlap, imbalance, size, tricks, loss at init, dead parameters",
        ),
        StageSpec(
            "batch_independence",
            BatchIndependenceSettings,
            "engine.stages.batch_independence:BatchIndependenceStage",
            "no sample's output depends on another sample's input",
        ),
        StageSpec(
            "overfit_one",
            OverfitSettings,
            "engine.stages.overfit:OverfitOneStage",
            "one sample, regularizers off: the loss must reach ~0",
        ),
        StageSpec(
            "overfit_few",
            OverfitFewSettings,
            "engine.stages.overfit:OverfitFewStage",
            "5–10 samples: the loss must still reach ~0, so the output depends on the input",
        ),
        StageSpec(
            "generalize",
            GeneralizeSettings,
            "engine.stages.generalize:GeneralizeStage",
            "full data: val loss falls by more than noise and beats the majority baseline",
        ),
        StageSpec(
            "speed",
            SpeedSettings,
            "engine.stages.speed:SpeedStage",
            "data-only vs compute-only vs the real loop: names the bottleneck",
        ),
        StageSpec(
            "train",
            TrainSettings,
            "engine.stages.train:TrainStage",
            "plain training with per-batch logging, full-val metrics and checkpoints",
        ),
        StageSpec(
            "multi_gpu",
            MultiGpuSettings,
            "engine.stages.multi_gpu:MultiGpuStage",
            "DDP keeps ranks identical, matches one process, and scales",
        ),
        StageSpec(
            "l1",
            GeneralizeSettings,
            "engine.stages.adversarial:L1Stage",
            "a generator alone with an L1/L2 loss: val loss beats the input-blind image",
        ),
        StageSpec(
            "adversarial",
            AdversarialSettings,
            "engine.stages.adversarial:AdversarialStage",
            "the l1 stage's generator against a WGAN-GP critic: balance, no collapse, realism",
        ),
        StageSpec(
            "lr_find",
            LrFindSettings,
            "engine.stages.lr_find:LrFindStage",
            "LR range test: an exponential sweep, a noise-robust suggestion to paste",
        ),
    ]
}

DEFAULT_LADDER = ["init", "batch_independence", "overfit_one", "overfit_few", "generalize", "speed"]


def settings_fields(name: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(STAGES[name].settings)}


def stage_settings(name: str, values: dict[str, Any] | None) -> Any:
    """The stage's settings dataclass filled from a validated preset section."""
    return STAGES[name].settings(**(values or {}))


def _default(f: dataclasses.Field) -> str:
    value = f.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_table() -> str:
    """README's table of every stage's settings: name, default and what it does."""
    rows = ["| stage | setting (default): what it does |", "|---|---|"]
    for name in STAGES:
        parts = [
            f"`{f.name}` ({_default(f)}): {f.metadata.get('doc', '')}"
            for f in dataclasses.fields(STAGES[name].settings)
        ]
        rows.append(f"| `{name}` | {' · '.join(parts) or '—'} |")
    return "\n".join(rows)
