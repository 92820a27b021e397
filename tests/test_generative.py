"""Generative, as the recipe orders it: the l1 stage (regression alone) first, the adversarial
stage (a WGAN-GP critic) only once it passed, with verdicts in words for what goes wrong."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine.stages.adversarial import Look, gradient_penalty, judge
from engine.torchfree.ladder import AdversarialSettings
from engine.torchfree.losses import read_names
from tests.conftest import PRESETS, run_inprocess, stage

GENERATIVE = PRESETS / "generative.yaml"
S = AdversarialSettings()
STEADY = {"W": [0.5] * 50, "G": [1.0] * 50, "D": [-0.5] * 50}


def _result(stopped: str = "steps", what: str = "", step: int | None = None):
    return SimpleNamespace(stopped=stopped, nonfinite_what=what, nonfinite_step=step)


def _look(**kw) -> Look:
    base = {"l1": 0.09, "separation": 0.3, "pixels": 0.08, "texture": 0.3, "diversity": 0.8}
    return Look(**{**base, **kw})


def _verdict(after: Look, curves=STEADY, result=None, before: Look | None = None):
    checks, _ = judge(before or _look(), after, curves, result or _result(), S)
    bad = [c for c in checks if c.status != "pass"]
    return bad[0].detail if bad else "pass"


def test_a_generator_that_came_closer_to_real_images_passes():
    assert _verdict(_look(texture=0.65, l1=0.12)) == "pass"


@pytest.mark.parametrize(
    "after, curves, result, words",
    [
        (_look(diversity=0.05), STEADY, None, "collapse to one output"),
        (_look(separation=6.0, texture=0.6), STEADY, None, "the critic overpowers the generator"),
        (_look(l1=0.3, texture=0.9), STEADY, None, "wrecks the reconstruction"),
        (_look(), STEADY, None, "the critic changed nothing measurable"),
        (
            _look(texture=0.6),
            {"W": [0.1] * 25 + [float(i) for i in range(10, 35)], "G": [1.0] * 50},
            None,
            "losses diverging: the critic's Wasserstein estimate grew",
        ),
        (_look(), STEADY, _result("nonfinite", "D", 57), "losses diverging: the critic's loss"),
    ],
)
def test_what_goes_wrong_when_the_critic_joins_is_said_in_words(after, curves, result, words):
    detail = _verdict(after, curves, result)
    assert words in detail, detail


def test_the_gradient_penalty_is_zero_for_a_one_lipschitz_critic():
    # WGAN-GP (Gulrajani et al. 2017, eq. 3): (‖∇D(x̂)‖₂ - 1)²; a linear critic w·x has ‖∇‖ = ‖w‖
    class Linear(nn.Module):
        def __init__(self, norm: float):
            super().__init__()
            w = torch.randn(1, 1, 4, 4)
            self.w = nn.Parameter(w / w.norm() * norm)

        def forward(self, cond, image):
            return (self.w * image).flatten(1).sum(1)

    real, fake, cond = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4), torch.zeros(8, 0, 4, 4)
    assert float(gradient_penalty(Linear(1.0), cond, real, fake)) == pytest.approx(0.0, abs=1e-10)
    assert float(gradient_penalty(Linear(3.0), cond, real, fake)) == pytest.approx(4.0, rel=1e-5)


def test_the_adversarial_stage_refuses_to_start_without_the_regression_stage(workspace):
    code, summary, _ = run_inprocess(GENERATIVE, workspace, stages=["adversarial"])
    assert code == 1
    adv = stage(summary, "adversarial")
    assert adv["status"] == "fail" and "runs only after the l1 stage passed" in adv["reason"]
    assert "--stages l1,adversarial" in adv["reason"]


@pytest.mark.slow
def test_the_generative_preset_passes_l1_then_adversarial(workspace):
    """The preset's seed, or the next one if the GAN was unlucky on this CPU: whether a seed's
    critic and generator stay in balance changes with the machine's arithmetic (see the
    preset's comment), and the healthy preset must pass on most seeds, not on one. The l1
    stage must pass on every seed tried; an unlucky seed must still end in words."""
    tried = []
    for seed in (1, 2):
        code, summary, run = run_inprocess(GENERATIVE, workspace, overrides={"seed": seed})
        assert [s["name"] for s in summary["stages"]][-2:] == ["l1", "adversarial"]
        assert stage(summary, "l1")["status"] == "pass"
        adv = stage(summary, "adversarial")
        tried.append(f"seed {seed}: {adv['status']}: {adv['reason']}")
        if adv["status"] == "pass":
            break
        assert adv["reason"]
    assert code == 0 and adv["status"] == "pass", tried
    assert adv["metrics"]["warm"] == 1.0  # it started from the l1 stage's generator
    assert set(read_names(run)) >= {"G", "D", "W"}


@pytest.mark.slow
def test_a_failing_regression_stage_never_starts_the_adversarial_one(workspace):
    # a generator that zeroes its input can only learn the average image: l1 fails
    code, summary, _ = run_inprocess(
        GENERATIVE,
        workspace,
        # seed 0: with 100 steps some seeds' blind generator is still falling towards the
        # baseline, and the stage (rightly) warns "raise l1.steps" rather than failing
        overrides={
            "model.ignore_input": True,
            "l1.steps": 100,
            "l1.label_test": False,
            "seed": 0,
        },
        stages=["l1", "adversarial"],
    )
    assert code == 1
    l1 = stage(summary, "l1")
    assert l1["status"] == "fail", l1["reason"]
    assert "the adversarial stage starts only once this plain regression passes" in l1["reason"]
    assert "adversarial" not in [s["name"] for s in summary["stages"]]
    assert summary["reason"].startswith("l1: ")


def test_the_l1_stage_names_its_own_steps_key_when_its_budget_runs_out():
    """The l1 stage is the generalize stage under another name: its "still falling" advice must
    say l1.steps, the key the user can raise (it said generalize.steps)."""
    from types import SimpleNamespace

    from engine.stages.generalize import _still_falling

    rows = [SimpleNamespace(train_loss=1.0 - 0.01 * i) for i in range(100)]
    result = SimpleNamespace(rows=rows, steps=100)
    evals = [(50, {"val_loss": 0.3}), (100, {"val_loss": 0.25})]
    for name in ("l1", "generalize"):
        said = _still_falling(result, evals, 0.2, 1e-3, name)
        assert f"raise {name}.steps (now 100)" in said
    assert "raise generalize.steps" not in _still_falling(result, evals, 0.2, 1e-3, "l1")
