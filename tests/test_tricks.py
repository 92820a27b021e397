"""The tricks of `cockpit ablate --tricks`: the preset's `tricks:` mapping is validated like
the rest of the preset, the shipped models' trick knobs default to off (so the ladder's
baseline is the recipe's plain model), augmentation touches the train set only, and the noise
band says when a difference is nothing."""

from __future__ import annotations

import argparse
import math
import sys

import pytest
import torch

from cockpit.ablate import (
    band_text,
    compare_to_baseline,
    format_tricks_table,
    noise_se,
    plan,
    trick_points,
)
from cockpit.cli import UsageError
from engine.torchfree import preset as presets
from tests.conftest import PRESETS

sys.path.insert(0, str(PRESETS))
import resnet  # presets/resnet.py
import shapes  # the presets' own module, importable the way the engine makes it


def args(preset, **kw):
    base = {"preset": str(preset), "sets": [], "stages": None, "grid": [], "parallel": None}
    base.update(kw)
    return argparse.Namespace(tricks=True, **base)


@pytest.mark.parametrize("name", ["quickstart", "segmentation", "regression", "digits"])
def test_every_shipped_preset_declares_tricks_that_resolve(name):
    preset = presets.load(PRESETS / f"{name}.yaml")
    tricks = preset.get("tricks")
    assert {"dropout", "batchnorm", "weight_decay", "lr_decay"} <= set(tricks)
    _, runs, _, stages = plan(args(PRESETS / f"{name}.yaml"))
    assert stages == ["train"] and len(runs) == len(tricks) + 1  # plus the baseline


def test_the_baseline_comes_first_and_pruning_is_off_for_the_comparison():
    base = presets.load(PRESETS / "quickstart.yaml")
    points = trick_points(base, "quickstart.yaml")
    assert points[0] == ("baseline", {"prune.rule": "none"})
    assert dict(points)["dropout"] == {"prune.rule": "none", "model.dropout": 0.2}


def test_a_trick_on_an_unknown_key_names_the_file_the_trick_and_a_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model: {_target_: shapes.SmallCNN}\ndata: {_target_: shapes.classification}\n"
        "tricks:\n  dropout: {modle.dropout: 0.2}\n"
    )
    with pytest.raises(presets.PresetError) as e:
        presets.load(bad)
    assert "line 4" in str(e.value) and "trick 'dropout'" in str(e.value)
    assert "did you mean 'model'" in str(e.value)
    bad.write_text(
        "model: {_target_: shapes.SmallCNN}\ndata: {_target_: shapes.classification}\n"
        "tricks: [dropout]\n"
    )
    with pytest.raises(presets.PresetError, match="tricks must be a mapping of trick names"):
        presets.load(bad)


def test_tricks_need_a_tricks_mapping_and_do_not_mix_with_a_grid(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "model: {_target_: shapes.SmallCNN}\ndata: {_target_: shapes.classification}\n"
    )
    with pytest.raises(UsageError, match="declares no tricks: add a tricks: mapping"):
        plan(args(plain))
    with pytest.raises(UsageError, match="--tricks and --grid do not mix"):
        plan(args(PRESETS / "quickstart.yaml", grid=["optimizer.lr=1e-3,3e-3"]))


def test_the_knobs_default_to_off_and_switch_on():
    from torch import nn

    def kinds(m):
        return {type(x) for x in m.modules()}

    plain = shapes.SmallCNN()
    assert sum(p.numel() for p in plain.parameters()) == 23621  # README: the 24k-parameter CNN
    assert not kinds(plain) & {nn.Dropout, nn.BatchNorm2d}
    assert nn.Dropout in kinds(shapes.SmallCNN(dropout=0.2))
    assert nn.BatchNorm2d in kinds(shapes.SmallCNN(batchnorm=True))
    deeper = shapes.SmallCNN(blocks=4)
    assert sum(isinstance(x, nn.Conv2d) for x in deeper.modules()) == 4
    assert deeper(torch.randn(2, 1, 24, 24)).shape == (2, 5)
    seg = shapes.SegNet(batchnorm=True, dropout=0.1)
    assert {nn.BatchNorm2d, nn.Dropout2d} <= kinds(seg)
    assert seg(torch.randn(2, 1, 24, 24)).shape == (2, 6, 24, 24)


def test_augmentation_touches_the_train_set_only_and_keeps_masks_aligned():
    train, val = shapes.segmentation(n_train=8, n_val=8, augment=True)
    torch.manual_seed(0)
    reads = [train[3] for _ in range(6)]
    assert any(not torch.equal(reads[0][0], r[0]) for r in reads[1:])  # train: random
    for x, mask in reads:  # the mask moved with the image: the shape's pixels are the bright ones
        assert x[0][mask > 0].mean() > x[0][mask == 0].mean() + 0.3
    assert torch.equal(val[3][0], val[3][0])  # val: the same every read (never augment val)
    ctrain, cval = shapes.classification(n_train=8, n_val=8, augment=True)
    assert ctrain.classes == list(shapes.SHAPES) and not hasattr(cval, "base")


def test_the_noise_band_is_the_binomial_error_of_the_val_set():
    # 90% accuracy on 500 val samples: se = sqrt(0.9 * 0.1 / 500) = 1.34%
    assert noise_se("accuracy", 0.9, 500, None) == pytest.approx(0.013416, abs=1e-5)
    assert noise_se("val_loss", 0.3, 500, 0.01) == 0.01
    assert math.isnan(noise_se("mae", 0.1, 500, None))
    # +0.4% against a band of 2 * sqrt(2) * 1.34% = 3.8%: nothing
    diff, band, verdict = compare_to_baseline((0.900, 0.0134), (0.904, 0.0134), "accuracy")
    assert verdict == "within noise" and band_text(diff, band, "accuracy") == "+0.4% ± 3.8%"
    assert compare_to_baseline((0.80, 0.01), (0.90, 0.01), "accuracy")[2] == "better"
    assert compare_to_baseline((0.30, 0.01), (0.40, 0.01), "val_loss")[2] == "worse"


def test_the_table_puts_the_baseline_first_and_ranks_the_tricks():
    def row(trick, value, diff, verdict):
        return {
            "trick": trick,
            "run_id": f"run-{trick}",
            "status": "passed",
            "reason": "",
            "pruned": None,
            "step": 100,
            "val_loss": 0.5,
            "band_metric": "accuracy",
            "value": value,
            "se": 0.0134,
            "n_val": 500,
            "diff": diff,
            "band": 0.038,
            "verdict": verdict,
        }

    text = format_tricks_table(
        [
            row("dropout", 0.904, 0.004, "within noise"),
            row("baseline", 0.900, math.nan, ""),
            row("batchnorm", 0.95, 0.05, "better"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["TRICK", "RUN"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["baseline", "batchnorm", "dropout"]
    assert "+0.4% ± 3.8%" in lines[3] and "within noise" in lines[3]
    assert "(reference)" in lines[1] and "500 val samples" in text


def tricks_workspace(ws):
    """Three runs of one `ablate --tricks` group: baseline 90.0%, batchnorm 97.0%, dropout 90.4%
    of 500 val samples."""
    from engine.torchfree.runfolder import RunFolder, write_json_atomic
    from tests.app.workspaces import T0, RunSpec, write_run

    for n, (trick, acc) in enumerate((("baseline", 0.90), ("batchnorm", 0.97), ("dropout", 0.904))):
        folder = write_run(
            ws,
            RunSpec(
                run_id=f"quickstart-20300317-05332{n}-ab1{n}",
                stage_names=["train"],
                verdicts=[("train", "pass", "trained")],
                group="quickstart-tricks-20300317-053320-0000",
                evals=[
                    {
                        "step": 100,
                        "time": T0 - 60,
                        "stage": "train",
                        "val_loss": 0.3,
                        "val_loss_se": 0.01,
                        "accuracy": acc,
                    }
                ],
                overrides={"prune.rule": "none"},
            ),
        )
        request = folder.request()
        write_json_atomic(folder.file("run.json"), {**request, "trick": trick})
        folder.write_summary({**folder.summary(), "val_size": 500})
    return [RunFolder(p) for p in sorted(ws.iterdir())]


def test_the_compare_view_ranks_tricks_against_the_baseline_with_the_band(tmp_path):
    import asyncio

    from textual.widgets import DataTable

    from cockpit.app.screens.compare import CompareScreen
    from tests.app.conftest import make_app, wait_until

    ws = tmp_path / "runs"
    tricks_workspace(ws)

    async def main():
        app = make_app(ws)
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_until(pilot, lambda: len(app.runs) == 3, what="the runs")
            await pilot.press("c")
            await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
            await pilot.pause(0.3)
            table = app.screen.query_one("#ranking", DataTable)
            labels = [str(c.label) for c in table.columns.values()]
            assert "vs baseline ± noise" in labels
            cells = {
                str(table.get_row_at(i)[2]): str(
                    table.get_row_at(i)[labels.index("vs baseline ± noise")]
                )
                for i in range(table.row_count)
            }
            return cells

    cells = asyncio.run(main())
    assert any(v == "baseline" for v in cells.values())
    assert "+7.0% ± 3.1% ▲" in cells.values()  # batchnorm: 2·sqrt(.9·.1/500 + .97·.03/500)
    assert "+0.4% ± 3.8% ≈" in cells.values()  # dropout: nothing


# ---------------------------------------------------------------- the small ResNet (recipe step 12)


def test_the_small_resnet_is_resnet18s_stem_and_first_stage():
    """At ImageNet's settings the stem and layer1 have torchvision's resnet18 conv1 + bn1 +
    layer1 parameters: 9,408 + 128 + 147,968 = 157,504 (torchvision.models.resnet18)."""
    m = resnet.ResNetSmall(in_channels=3, classes=5, width=64, stem_kernel=7, stem_stride=2)
    body = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("fc."))
    assert body == 157_504
    assert m(torch.randn(2, 3, 224, 224)).shape == (2, 5)
    assert len(m.layer1) == 2 and all(isinstance(b, resnet.BasicBlock) for b in m.layer1)


def test_a_zero_initialised_residual_block_starts_as_the_identity():
    block = resnet.ResNetSmall(width=8, zero_init_residual=True).layer1[0].eval()
    x = torch.rand(2, 8, 6, 6)  # non-negative: what follows a ReLU
    assert torch.allclose(block(x), x)
    plain = resnet.ResNetSmall(batchnorm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


@pytest.mark.slow
def test_the_small_resnet_preset_passes_the_ladder_and_says_batchnorm_is_on(workspace):
    from tests.conftest import run_inprocess

    code, summary, _ = run_inprocess(
        PRESETS / "resnet_small.yaml",
        workspace,
        overrides={"generalize.steps": 200, "generalize.eval_every": 100, "speed.batches": 5},
    )
    problems = [(s["name"], s["status"], s["reason"]) for s in summary["stages"]]
    assert code == 0 and summary["status"] == "passed", problems
    init = summary["stages"][0]
    assert init["status"] == "warn" and "batchnorm" in init["reason"], problems
    assert all(s["status"] == "pass" for s in summary["stages"][1:]), problems
