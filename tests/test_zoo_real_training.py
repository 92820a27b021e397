"""Training bugs as people reported them: the ladder's training stages (overfit_one, overfit_few,
generalize) must flag each with the right stage AND name its cause; healthy models built like
library ones must get no failure. Cases live in tests/zoo/real_training.py; each cites its
public report. Plus unit tests of the pieces the verdicts stand on (floors, curve shapes,
update ratios, confidence intervals)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.conftest import ZOO, run_inprocess, stage

BASE = ZOO / "blobs.yaml"
RT = "real_training"

# id: source, overrides, stages run, stage that must catch it, status, words its reason must hold
CASES = {
    # https://github.com/AnubhavGupta3377/Text-Classification-Models-Pytorch/issues/9
    # ("only softmax is provided in model.py, therefore the loss is always negative");
    # also https://github.com/yanx27/Pointnet_Pointnet2_pytorch/issues/30
    "softmax_into_nllloss": {
        "overrides": {
            "model._target_": f"{RT}.SoftmaxMLP",
            "loss": {"_target_": "torch.nn.NLLLoss"},
        },
        "stages": ["overfit_one"],
        "stage": "overfit_one",
        "status": "fail",
        "words": ["below 0", "NLLLoss takes log-probabilities"],
    },
    # https://discuss.pytorch.org/t/cross-entropy-loss-is-not-decreasing/43814/16
    # ("Check if you pass the softmax into the CrossEntropy loss")
    "softmax_before_crossentropy": {
        "overrides": {
            "model._target_": f"{RT}.SoftmaxMLP",
            "model.classes": 10,
            "data._target_": f"{RT}.blobs10",
        },
        "stages": ["overfit_one"],
        "stage": "overfit_one",
        "status": "fail",
        "words": ["ln(1 + (C−1)/e) = 1.46", "remove the softmax"],
    },
    # https://github.com/yudi-mars/daisyRec/pull/15 ("Do not need sigmoid because there is
    # sigmoid in BCEWithLogitsLoss. Otherwise loss does not converge");
    # https://github.com/avBuffer/UNet3plus_pth/issues/23
    "sigmoid_before_bcewithlogits": {
        "overrides": {
            "task": "regression",
            "data": {"_target_": f"{RT}.binary_blobs"},
            "model": {"_target_": f"{RT}.SigmoidLogit"},
            "loss": {"_target_": "torch.nn.BCEWithLogitsLoss"},
        },
        "stages": ["overfit_few"],
        "stage": "overfit_few",
        "status": "fail",
        "words": ["a sigmoid before BCEWithLogitsLoss", "ln(1 + e⁻¹) = 0.313"],
    },
    # https://math.stackexchange.com/ question mirrored at
    # https://math.techqa.club/are-relu-a-very-bad-choice-as-last-layer-for-regression-4483706
    # and https://stats.stackexchange.com/questions/362588
    "relu_on_regression_output": {
        "overrides": {
            "task": "regression",
            "data": {"_target_": f"{RT}.standardized_regression"},
            "model": {"_target_": f"{RT}.ReluRegressor"},
        },
        "stages": ["overfit_few"],
        "stage": "overfit_few",
        "status": "fail",
        "words": ["never negative", "remove the activation after the last layer"],
    },
    # https://discuss.pytorch.org/t/cross-entropy-loss-is-not-decreasing/43814/16 — the
    # parameters "almost all negative, and their derivatives all zero": dead ReLUs after a
    # too-large step ("use a smaller learning rate")
    "learning_rate_wrecks_the_net": {
        "overrides": {
            "task": "regression",
            "data": {"_target_": f"{RT}.standardized_regression"},
            "model": {"_target_": f"{RT}.MLPRegressor"},
            "optimizer.lr": 3.0,
        },
        "stages": ["overfit_few"],
        "stage": "overfit_few",
        "status": "fail",
        "words": ["learning rate 3", "lower it"],
        "not_words": ["input that is dropped"],
    },
    # OrderLab/TrainCheck-Evaluation-Workloads, silent-issue-detection (frozen weights);
    # https://runebook.dev/en/docs/pytorch/generated/torch.nn.module/torch.nn.Module.requires_grad_
    # ("You mistakenly call model.requires_grad_(False) on the entire model")
    "every_parameter_frozen": {
        "overrides": {"model._target_": f"{RT}.FrozenMLP"},
        "stages": ["overfit_one"],
        "stage": "overfit_one",
        "status": "fail",
        "words": ["frozen (requires_grad=False)"],
    },
    # https://github.com/wandb/senpai/pull/978 ("100% of training batches are clipped ... The
    # effective step size is ~20x lower than what the LR implies"); https://github.com/facebookresearch/detr/issues/198
    # (clip_max_norm=0.1 against gradient norms of 10-100): a clip far under the gradient's own
    # norm, with SGD (Adam would undo it), is a learning rate divided by the ratio — the
    # verdict must blame the clip, not tell the person to raise a learning rate that is fine
    "gradient_clipped_to_nothing": {
        "overrides": {
            "grad_clip": 1e-4,
            "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1},
        },
        "stages": ["overfit_one"],
        "stage": "overfit_one",
        "status": "fail",
        "words": ["because grad_clip 0.0001 cut the gradient's norm to 0.0001", "remove grad_clip"],
        "not_words": ["far too low", "lr_find"],
    },
    # inputs scaled down twice (tests/zoo/real_training.py cites the reports): the outputs
    # ignore the inputs, and the reason must say why — not "look for a detached input"
    "inputs_scaled_down_twice": {
        "overrides": {"data._target_": f"{RT}.blobs_scaled_down_twice"},
        "stages": ["overfit_few"],
        "stage": "overfit_few",
        "status": "fail",
        "words": ["the output does not depend on the input", "the inputs are tiny (spread"],
        "not_words": ["dropped, zeroed or detached"],
    },
    # https://github.com/Lornatang/SRGAN-PyTorch/issues/1 ("they are called at each training
    # step which means that learning rate is quickly becoming zero"); https://github.com/hazdzz/stgcn/issues/18
    "scheduler_stepped_per_batch": {
        "overrides": {
            "optimizer.lr": 1e-3,
            "scheduler": {
                "_target_": "torch.optim.lr_scheduler.StepLR",
                "step_size": 4,
                "gamma": 0.1,
            },
        },
        "stages": ["generalize"],
        "stage": "generalize",
        "status": "fail",
        "words": ["the learning rate fell from 0.001", "count batches, not epochs"],
    },
    # https://datarekha.com/interview/deep-learning/debugging-model-not-learning/ ("DataLoader
    # accidentally shuffling labels but not inputs"); https://www.onenoughtone.com/problems/synchronized-data-permutation
    "train_labels_shuffled_apart": {
        "overrides": {"data._target_": f"{RT}.blobs_train_labels_shuffled"},
        "stages": ["generalize"],
        "stage": "generalize",
        "status": "fail",
        "words": ["carry no information about the inputs", "shuffled separately"],
    },
    # https://datarekha.com/interview/deep-learning/debugging-model-not-learning/ ("Label indices
    # off by one"); https://github.com/QLMX/huawei-garbage/issues/14 (an `index += 1` in __getitem__)
    "label_index_off_by_one": {
        "overrides": {"data._target_": f"{RT}.blobs_label_off_by_one"},
        "stages": ["generalize"],
        "stage": "generalize",
        "status": "fail",
        "words": ["carry no information about the inputs", "off-by-one index"],
    },
    # https://github.com/pytorch/examples/issues/377 (train precision 94%, validation < 1%:
    # val labels in another order than the val images)
    "val_labels_not_paired": {
        "overrides": {"data._target_": "zoo.blobs_shuffled_val_labels"},
        "stages": ["generalize"],
        "stage": "generalize",
        "status": "fail",
        "words": ["learned the train labels", "val labels do not belong to the val inputs"],
    },
    # https://github.com/Novartis/scar/issues/97 ("Either one alone does not make it
    # reproducible"); https://github.com/MichiganCOG/ViP/issues/25 ("numpy is unseeded")
    "init_from_unseeded_numpy": {
        "overrides": {"model._target_": f"{RT}.NumpyInitMLP"},
        "stages": ["overfit_one"],
        "stage": "overfit_one",
        "status": "warn",
        "words": ["two runs with seed 0 differ", "initialisation"],
    },
    # healthy, and a floor that is not 0: https://github.com/pytorch/pytorch/issues/130342
    # ("the cross entropy loss using label_smoothing > 0 does not reach its minimum when the
    # loss is zero"); https://github.com/lxztju/pytorch_classification/issues/9
    "label_smoothing_floor": {
        "overrides": {"loss": {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1}},
        "stages": ["overfit_one", "overfit_few"],
        "stage": "overfit_few",
        "status": "pass",
        "words": ["above its floor 0.349"],
    },
    # issue 13 of this project: a healthy model that needs more steps must read as a budget
    # warning with the steps it needs, never a failure blamed on the model
    "budget_too_small": {
        "overrides": {"optimizer.lr": 1e-3, "overfit_few.steps": 25},
        "stages": ["overfit_few"],
        "stage": "overfit_few",
        "status": "warn",
        "words": ["the step budget ran out while the loss was still falling", "more steps"],
    },
    # issue 13: on a loaded machine the wall-time guard ends a healthy stage — it must say so
    "wall_time_guard": {
        "overrides": {"optimizer.lr": 1e-3, "overfit_few.seconds": 0.02},
        "stages": ["overfit_few"],
        "stage": "overfit_few",
        "status": "warn",
        "words": ["the wall-time guard (0.02 s) ended the stage", "says nothing against the model"],
    },
    # issue 13 again, for generalize: a healthy model with a small budget is still learning
    "generalize_budget_too_small": {
        "overrides": {"optimizer.lr": 1e-4, "generalize.steps": 60, "generalize.eval_every": 30},
        "stages": ["generalize"],
        "stage": "generalize",
        "status": "warn",
        "words": ["the step budget ran out while the loss was still falling", "more steps to beat"],
    },
}

HEALTHY = {
    "resnet_stem_batchnorm": {
        "data": {"_target_": f"{RT}.blob_images"},
        "model": {"_target_": f"{RT}.ResNetStem"},
        "optimizer.lr": 2e-3,
        "overfit_few.steps": 200,
        "generalize.steps": 120,
        "generalize.eval_every": 60,
    },
    "transformer_encoder_tokens": {
        "data": {"_target_": f"{RT}.token_sequences"},
        "model": {"_target_": f"{RT}.TokenTransformer"},
        "optimizer.lr": 1e-3,
        "overfit_one.steps": 100,
        "overfit_few.steps": 150,
        "generalize.steps": 100,
        "generalize.eval_every": 50,
    },
    "wide_mlp_over_1m_on_digits": {
        "data": {"_target_": f"{RT}.digits"},
        "model": {"_target_": f"{RT}.WideMLP"},
        "optimizer.lr": 1e-3,
        "generalize.steps": 120,
        "generalize.eval_every": 60,
    },
}


# the budgets are steps: the wall-time guards only catch hangs (these run on loaded CI too)
GUARDS = {"overfit_one.seconds": 600, "overfit_few.seconds": 600, "generalize.seconds": 600}


def _run(workspace, overrides, stages):
    return run_inprocess(BASE, workspace, overrides=overrides, stages=stages)


@pytest.mark.parametrize("case", list(CASES))
def test_reported_bug_gets_stage_and_cause(case, workspace):
    c = CASES[case]
    code, summary, _ = _run(workspace, c["overrides"], c["stages"])
    record = stage(summary, c["stage"])
    assert record["status"] == c["status"], record
    for w in c["words"]:
        assert w in record["reason"], (w, record["reason"])
    for w in c.get("not_words", []):
        assert w not in record["reason"], (w, record["reason"])
    assert code == (1 if c["status"] == "fail" else 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HEALTHY))
def test_library_like_model_gets_no_failure(name, workspace):
    pytest.importorskip("sklearn") if "digits" in name else None
    stages = ["overfit_one", "overfit_few", "generalize"]
    code, summary, _ = _run(workspace, {**GUARDS, **HEALTHY[name]}, stages)
    got = {s["name"]: (s["status"], s["reason"]) for s in summary["stages"]}
    assert [s["name"] for s in summary["stages"]] == stages, got
    assert all(status != "fail" for status, _ in got.values()), got
    assert code == 0, got


# ---------------------------------------------------------------- the pieces


def test_floors_of_the_usual_losses():
    from engine.diagnosis.floors import constrained_floors, natural_floor

    y = torch.tensor([0, 3, 7, 9])
    logits = torch.randn(4, 10)
    ce = nn.CrossEntropyLoss()
    assert natural_floor(ce, logits, y) == pytest.approx(0.0, abs=1e-6)
    smooth = nn.CrossEntropyLoss(label_smoothing=0.1)
    q = 1 - 0.1 + 0.01  # the smoothed target's mass on the true class
    entropy = -(q * math.log(q) + 9 * 0.01 * math.log(0.01))
    assert natural_floor(smooth, logits, y) == pytest.approx(entropy, rel=1e-4)
    probs = torch.softmax(logits, 1)
    (floor,) = constrained_floors(ce, probs, probs, y, 0.0)
    assert floor.value == pytest.approx(math.log(1 + 9 / math.e), rel=1e-5)
    (nll,) = constrained_floors(nn.NLLLoss(), probs, probs, y, 0.0)
    assert nll.value == pytest.approx(-1.0)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0])
    (bce,) = constrained_floors(nn.BCEWithLogitsLoss(), torch.rand(4), torch.rand(4), t, 0.0)
    assert bce.value == pytest.approx((2 * math.log(1 + math.exp(-1)) + 2 * math.log(2)) / 4)
    yr = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    relu_out = torch.tensor([0.0, 0.0, 1.0, 2.0])
    (relu,) = constrained_floors(nn.MSELoss(), relu_out, relu_out, yr, 0.0)
    assert relu.value == pytest.approx((4 + 1) / 4)
    assert constrained_floors(ce, logits, logits, y, 0.0) == []  # plain logits: no floor


def test_curve_shape_tells_falling_from_plateau_and_divergence():
    from engine.loop import Row
    from engine.stages.common import curve_shape

    def rows(values):
        return [Row(i + 1, 0.0, v, math.nan, 0, 0, 0, 1e-3) for i, v in enumerate(values)]

    falling = [2.0 * math.exp(-0.01 * i) for i in range(100)]
    shape = curve_shape(rows(falling), 0.0, 0.04)
    assert shape.kind == "falling"
    # exp(-0.01 s) reaches 2% of its start at s = ln 50 / 0.01 ≈ 391: ~290 more steps
    assert 200 < shape.more_steps < 400
    flat = [2.0 * math.exp(-0.1 * i) + 1.0 for i in range(100)]
    assert curve_shape(rows(flat), 0.0, 0.04).kind == "plateau"
    up = [1.0 + 0.05 * i for i in range(60)]
    shape = curve_shape(rows(up), 0.0, 0.02)
    assert shape.kind == "diverged" and shape.since == 12
    bouncy = [1.0 - 0.005 * i + (0.4 if i % 7 == 0 else 0.0) for i in range(80)]
    shape = curve_shape(rows(bouncy), 0.0, 0.02)
    assert shape.kind == "oscillating" and shape.rises >= 3
    negative = [-0.1 - 0.9 * (1 - math.exp(-0.2 * i)) for i in range(60)]  # towards -1
    assert curve_shape(rows(negative), -1.0, -0.98).progress > 0.95


def test_update_monitor_measures_the_first_steps_from_optimizer_hooks():
    from engine.diagnosis.updates import UpdateMonitor, lr_diagnosis, stalled_diagnosis

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = UpdateMonitor(model, opt, steps=3)
    x, y = torch.randn(32, 8), torch.randint(2, (32,))
    before = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if len(mon._ratios) == 1:
            after = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    rep = mon.report()
    assert rep.steps == 3 and rep.layers == ["0", "2"]
    dw = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(after, before)))
    w = math.sqrt(sum(float(b.pow(2).sum()) for b in before))
    assert rep.ratios[0][0] == pytest.approx(dw / w, rel=1e-4)
    assert set(rep.dead) == {"1"}
    assert lr_diagnosis(rep, 0.1) is None
    frozen = UpdateMonitor(model.requires_grad_(False), opt, steps=1).report()
    assert "frozen" in stalled_diagnosis(frozen, 0.1)


def test_accuracy_interval_is_binomial_and_noise_reads_as_noise():
    from engine.stages.generalize import interval

    half = interval("accuracy", torch.zeros(400), 0.28, 0.95)
    assert half == pytest.approx(1.96 * math.sqrt(0.28 * 0.72 / 400))
    errs = torch.rand(500, generator=torch.Generator().manual_seed(0))
    half = interval("mae", errs, float(errs.mean()), 0.95)
    assert half == pytest.approx(1.96 * float(errs.std()) / math.sqrt(500), rel=0.25)


def test_input_blind_baseline_loss_is_the_class_prior_entropy():
    from engine.stages.generalize import blind_loss

    train = torch.tensor([0] * 75 + [1] * 25)
    val = torch.tensor([0] * 30 + [1] * 10)
    got = blind_loss(nn.CrossEntropyLoss(), "classification", train, val, (2,))
    p0, p1 = 75.5 / 101, 25.5 / 101  # the smoothed train prior
    assert got == pytest.approx(-(0.75 * math.log(p0) + 0.25 * math.log(p1)), rel=1e-4)
    ty, vy = torch.randn(200) * 3 + 1, torch.randn(100) * 3 + 1
    mse = blind_loss(nn.MSELoss(), "regression", ty, vy, ())
    assert mse == pytest.approx(float(((vy - ty.mean()) ** 2).mean()), rel=1e-5)


def test_a_gradient_is_called_clipped_only_when_every_step_sat_at_the_limit():
    from engine.diagnosis.updates import UpdateReport, stalled_diagnosis

    # per step, per layer: the whole norm is the root of the squares (0.6, 0.8 -> 1.0)
    at_limit = UpdateReport(
        layers=["a", "b"], ratios=[[1e-7, 1e-7]] * 3, grad_norms=[[0.6, 0.8]] * 3, steps=3
    )
    assert at_limit.clipped_to(1.0) and not at_limit.clipped_to(None)
    assert not at_limit.clipped_to(2.0)  # under the limit: the clip did nothing
    once = UpdateReport(
        layers=["a", "b"], ratios=[[1e-7, 1e-7]] * 2, grad_norms=[[0.6, 0.8], [3.0, 4.0]], steps=2
    )
    assert not once.clipped_to(1.0)  # one step above it: not the clip holding every step
    said = stalled_diagnosis(at_limit, 0.1, 1.0)
    assert "because grad_clip 1 cut the gradient's norm to 1" in said and "far too low" not in said
    assert "the learning rate 0.1 is far too low" in stalled_diagnosis(at_limit, 0.1, None)
