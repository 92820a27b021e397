"""The bug zoo: each classic bug planted in a tiny preset must be caught by the right stage,
with the right verdict and a reason a person understands; healthy presets raise no alarm."""

from __future__ import annotations

import pytest

from tests.conftest import ZOO, check, run_inprocess, stage

BASE = ZOO / "blobs.yaml"

# id: (overrides, stages, stage that catches it, verdict, check or None, words in the sentence)
CASES = {
    "nan_inputs": (
        {"data._target_": "zoo.blobs_with_nan"},
        ["init"],
        "init",
        "fail",
        "finite_inputs",
        "contain NaN or inf",
    ),
    "labels_off_by_one": (
        {"data._target_": "zoo.blobs_labels_too_big"},
        ["init"],
        "init",
        "fail",
        "target_range",
        "targets range over 1..4",
    ),
    "float_labels": (
        {"data._target_": "zoo.blobs_float_labels"},
        ["init"],
        "init",
        "fail",
        "data_format",
        "class ids (torch.long)",
    ),
    "same_input_every_index": (
        {"data._target_": "zoo.blobs_same_input"},
        ["init"],
        "init",
        "fail",
        "inputs_vary",
        "identical",
    ),
    "augmented_val": (
        {"data._target_": "zoo.blobs_augmented_val"},
        ["init"],
        "init",
        "fail",
        "val_deterministic",
        "never augment val",
    ),
    "train_val_overlap": (
        {"data._target_": "zoo.blobs_overlapping"},
        ["init"],
        "init",
        "fail",
        "train_val_overlap",
        "also appear in train",
    ),
    "class_imbalance": (
        {"data._target_": "zoo.blobs_imbalanced"},
        ["init"],
        "init",
        "warn",
        "class_balance",
        "suggested loss weights",
    ),
    "too_many_parameters": (
        {"model": {"_target_": "zoo.BigMLP"}},
        ["init"],
        "init",
        "warn",
        "parameters",
        "under 1.00M",
    ),
    "tricks_on": (
        {
            "model.dropout": 0.5,
            "model.batchnorm": True,
            "optimizer._target_": "torch.optim.AdamW",
            "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 100},
        },
        ["init"],
        "init",
        "warn",
        "tricks_off",
        "dropout",
    ),
    "loss_at_init_too_high": (
        {"model.out_scale": 60.0},
        ["init"],
        "init",
        "warn",
        "loss_at_init",
        "the expected ln 4",
    ),
    "detached_features": (
        {"model._target_": "zoo.DetachedFeatures"},
        ["init"],
        "init",
        "fail",
        "gradients",
        "detaches the graph",
    ),
    "unused_layer": (
        {"model._target_": "zoo.UnusedLayer"},
        ["init"],
        "init",
        "warn",
        "gradients",
        "defined but not used",
    ),
    "regression_broadcast": (
        {
            "task": "regression",
            "data": {"_target_": "zoo.regression_data"},
            "model": {"_target_": "zoo.Regressor", "in_dim": 8, "squeeze": False},
        },
        ["init"],
        "init",
        "fail",
        "target_range",
        "squeeze the output",
    ),
    "dataset_not_pairs": (
        {"data._target_": "zoo.not_pairs"},
        ["init"],
        "init",
        "fail",
        None,
        "(input, target) pairs",
    ),
    "batch_mixing_reshape": (
        {"model._target_": "zoo.BatchMixer"},
        ["batch_independence"],
        "batch_independence",
        "fail",
        "gradient_isolation",
        "mixes the batch",
    ),
    "batch_statistics_in_forward": (
        {"model._target_": "zoo.BatchNormalizer"},
        ["batch_independence"],
        "batch_independence",
        "fail",
        "gradient_isolation",
        "depends on sample",
    ),
    "lr_too_low": (
        {"optimizer.lr": 1e-7},
        ["overfit_one"],
        "overfit_one",
        "fail",
        "loss_reaches_zero",
        "barely moved",
    ),
    "lr_too_high": (
        {
            "task": "regression",
            "data": {"_target_": "zoo.regression_data"},
            "model": {"_target_": "zoo.Regressor", "in_dim": 8},
            "overfit_few.lr": 30.0,
            "optimizer._target_": "torch.optim.SGD",
        },
        ["overfit_few"],
        "overfit_few",
        "fail",
        None,
        "learning rate",
    ),
    "output_ignores_input": (
        {"model": {"_target_": "zoo.InputBlind", "in_dim": 16, "classes": 4}, "optimizer.lr": 0.1},
        ["overfit_one", "overfit_few"],
        "overfit_few",
        "fail",
        "loss_reaches_zero",
        "does not depend on the input",
    ),
    "val_labels_misaligned": (
        {"data._target_": "zoo.blobs_shuffled_val_labels"},
        ["generalize"],
        "generalize",
        "fail",
        "val_loss_falls",
        "did not fall",
    ),
    "slow_data_loader": (
        {"data._target_": "zoo.blobs_slow", "data.delay": 0.003},
        ["speed"],
        "speed",
        "warn",
        "data_wait",
        "set num_workers",
    ),
    "batch_over_a_second": (
        {
            "model._target_": "zoo.SlowModel",
            "model.delay": 0.35,
            "speed": {"batches": 1, "seconds": 1, "max_batch_s": 0.5},
        },
        ["speed"],
        "speed",
        "fail",
        "batch_time",
        "over 0.5 s",
    ),
    "nan_mid_training": (
        {"model._target_": "zoo.NanAfter", "model.after": 7},
        ["train"],
        "train",
        "fail",
        None,
        "non-finite at step 7",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bug_is_caught(case, workspace):
    overrides, stages, where, verdict, check_name, words = CASES[case]
    code, summary, _ = run_inprocess(BASE, workspace, overrides=overrides, stages=stages)
    record = stage(summary, where)
    assert record["status"] == verdict, record
    if check_name:
        c = check(record, check_name)
        assert c["status"] == verdict, c
        assert words in c["detail"], c["detail"]
    else:
        assert words in record["reason"], record["reason"]
    assert code == (1 if verdict == "fail" else 0)
    assert summary["status"] == ("failed" if verdict == "fail" else "passed")
    if verdict == "fail":
        assert summary["stages"][-1]["name"] == where, "a failing stage must stop the ladder"


def test_overfit_one_passes_before_input_blindness_shows(workspace):
    _, summary, _ = run_inprocess(
        BASE,
        workspace,
        overrides=CASES["output_ignores_input"][0],
        stages=["overfit_one", "overfit_few"],
    )
    assert stage(summary, "overfit_one")["status"] == "pass"


def test_batchnorm_is_handled_honestly(workspace):
    code, summary, _ = run_inprocess(
        BASE,
        workspace,
        overrides={"model.batchnorm": True},
        stages=["batch_independence", "overfit_one"],
    )
    bi = stage(summary, "batch_independence")
    assert bi["status"] == "pass"
    assert "eval mode" in check(bi, "batchnorm")["detail"]
    one = stage(summary, "overfit_one")
    assert one["status"] == "pass"
    assert "batchnorm ×1 frozen" in check(one, "regularizers_off")["detail"]
    assert code == 0


def test_model_crash_names_the_users_line(workspace):
    code, summary, _ = run_inprocess(
        BASE, workspace, overrides={"model": {"_target_": "zoo.ShapeBug"}}, stages=["overfit_one"]
    )
    record = stage(summary, "overfit_one")
    assert record["status"] == "fail"
    assert record["reason"].startswith("crashed: RuntimeError")
    assert "(in zoo.py:" in record["reason"]
    assert summary["status"] == "error" and code == 1


def test_data_builder_exception_fails_the_run_with_its_message(workspace):
    code, summary, _ = run_inprocess(
        BASE, workspace, overrides={"data._target_": "zoo.broken_data"}
    )
    assert code == 1
    assert summary["status"] == "failed"
    assert "the CSV has 3 columns, expected 4" in summary["reason"]


def test_healthy_blobs_pass_the_whole_ladder_without_warnings(workspace):
    code, summary, _ = run_inprocess(BASE, workspace)
    assert code == 0, summary
    assert [s["name"] for s in summary["stages"]] == [
        "init",
        "batch_independence",
        "overfit_one",
        "overfit_few",
        "generalize",
        "speed",
    ]
    assert {s["status"] for s in summary["stages"]} == {"pass"}, [
        (s["name"], s["reason"]) for s in summary["stages"] if s["status"] != "pass"
    ]
