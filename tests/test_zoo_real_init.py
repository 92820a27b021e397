"""Real bugs, reproduced from public reports (tests/zoo/real_init.py cites each thread), that
init and batch_independence must name — stage, verdict and the words of the cause — and
healthy setups built like library architectures that must raise no failure there, also while
other processes keep every core busy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ZOO, check, run_inprocess, stage

BASE = ZOO / "blobs.yaml"
EARLY = ["init", "batch_independence"]


def _m(target: str, **kw) -> dict:
    return {"_target_": f"real_init.{target}", **kw}


CE = {"_target_": "torch.nn.CrossEntropyLoss"}
NLL = {"_target_": "torch.nn.NLLLoss"}
BCEL = {"_target_": "torch.nn.BCEWithLogitsLoss"}
TOKENS = _m("tokens")
BINARY = _m("binary_blobs")

# id: (overrides, stages, stage that names it, verdict, check, words in the check's detail)
CASES = {
    "softmax_before_cross_entropy": (
        {"model": _m("SoftmaxHead", in_dim=16, outputs=4), "data": _m("blobs")},
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "CrossEntropyLoss applies log-softmax itself: remove the",
    ),
    "sigmoid_before_bce_with_logits": (
        {"model": _m("SigmoidLogit"), "data": BINARY, "loss": BCEL},
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "BCEWithLogitsLoss applies the sigmoid itself: remove the sigmoid",
    ),
    "softmax_into_nll_loss_on_tokens": (
        {"model": _m("TokenTransformer", final="softmax"), "data": TOKENS, "loss": NLL},
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "NLLLoss expects log-probabilities",
    ),
    "softmax_over_the_batch_before_cross_entropy": (
        {"model": _m("softmax_over_batch_policy"), "data": _m("blobs")},
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "the model's softmax normalises over dim 0 — the batch — not over the classes",
    ),
    "log_softmax_over_the_batch_into_nll_loss": (
        {"model": _m("LogSoftmaxOverBatch"), "data": _m("blobs"), "loss": NLL},
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "log_softmax normalises over dim 0 — the batch — not over the classes: each class's "
        "column log-sum-exps to 0 across the",
    ),
    "logits_into_nll_loss": (
        # https://github.com/yanx27/Pointnet_Pointnet2_pytorch/issues/30
        {"model": _m("MLP"), "data": _m("blobs"), "loss": NLL},
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "raw scores",
    ),
    "relu_on_regression_output": (
        # https://github.com/ProteomicsML/ProteomicsML/pull/203
        {
            "task": "regression",
            "model": _m("MLP", in_dim=8, outputs=1, final="relu", squeeze=True),
            "data": _m("regression"),
        },
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "ends in a relu, so it outputs only [0, inf)",
    ),
    "sigmoid_on_unscaled_regression_targets": (
        {
            "task": "regression",
            "model": _m("MLP", in_dim=8, outputs=1, final="sigmoid", squeeze=True),
            "data": _m("regression_unscaled"),
        },
        ["init"],
        "init",
        "fail",
        "loss_contract",
        "outside [0, 1]",
    ),
    "val_not_normalised_like_train": (
        {"model": _m("MLP", in_dim=144, outputs=2), "data": _m("val_not_normalised")},
        ["init"],
        "init",
        "fail",
        "train_val_inputs",
        "val inputs are on another scale than train's",
    ),
    "raw_0_255_pixels": (
        {"model": _m("MLP", in_dim=144, outputs=2), "data": _m("raw_pixels")},
        ["init"],
        "init",
        "warn",
        "input_scale",
        "divide by 255",
    ),
    "pixels_divided_by_255_twice": (
        {"model": _m("MLP", in_dim=144, outputs=2), "data": _m("pixels_divided_twice")},
        ["init"],
        "init",
        "warn",
        "input_scale",
        "pixels divided by 255 twice? ToTensor already scales to [0, 1]",
    ),
    "mse_loss_on_class_ids": (
        # https://github.com/likyoo/change_detection.pytorch/issues/5 (an element-wise loss on
        # class-id labels: "The size of tensor a (2) must match the size of tensor b (8)")
        {"loss": {"_target_": "torch.nn.MSELoss"}},
        ["init"],
        "init",
        "fail",
        "data_format",
        "MSELoss compares the outputs with the targets element by element, but the targets are "
        "class ids",
    ),
    "val_cut_from_data_sorted_by_label": (
        {"model": _m("MLP", outputs=5), "data": _m("sorted_then_last_fifth_as_val")},
        ["init"],
        "init",
        "fail",
        "split_classes",
        "class 4 is 100% of val and 0% of train (the class shares differ by 100%); class 4 "
        "appears in val but never in train's 800 samples read: a dataset sorted by label and cut "
        "without shuffling?",
    ),
    "regression_targets_scaled_in_train_only": (
        {
            "task": "regression",
            "model": _m("MLP", in_dim=8, outputs=1, squeeze=True),
            "data": _m("regression_val_targets_unscaled"),
        },
        ["init"],
        "init",
        "fail",
        "train_val_targets",
        "val targets are on another scale than train's: train mean 0, spread 1; val mean",
    ),
    "optimizer_on_last_layer_only": (
        {"optimizer": _m("last_layer_sgd", lr=0.01)},
        ["init"],
        "init",
        "fail",
        "optimizer_coverage",
        "get gradients but never change",
    ),
    "frozen_backbone_trained_from_scratch": (
        {"model": _m("FrozenBackbone"), "data": _m("images")},
        ["init"],
        "init",
        "warn",
        "frozen",
        "backbone",
    ),
    "functional_dropout_in_eval": (
        {"model": _m("FunctionalDropout")},
        ["init"],
        "init",
        "warn",
        "eval_deterministic",
        "random in eval mode",
    ),
    "functional_dropout_is_not_batch_mixing": (
        {"model": _m("FunctionalDropout")},
        ["batch_independence"],
        "batch_independence",
        "warn",
        "eval_deterministic",
        "F.dropout(x, p) without training=self.training",
    ),
    "lstm_without_batch_first_on_tokens": (
        {"model": _m("TokenLSTM"), "data": TOKENS},
        ["batch_independence"],
        "batch_independence",
        "fail",
        "gradient_isolation",
        "(at the embedding output: the inputs are token ids)",
    ),
    "view_instead_of_transpose_on_tokens": (
        {"model": _m("TokenViewMixer"), "data": TOKENS},
        ["batch_independence"],
        "batch_independence",
        "fail",
        "gradient_isolation",
        "something mixes the batch",
    ),
    "tuple_output_aux_logits": (
        {"model": _m("Inception")},
        ["init"],
        "init",
        "fail",
        "model_output",
        "returns a tuple of 2",
    ),
    "zero_init_before_relu": (
        {"model": _m("ZeroInitReLU")},
        ["init"],
        "init",
        "fail",
        "activations",
        "every unit of ReLU act is 0",
    ),
    "negative_bias_dead_relus": (
        {"model": _m("NegativeBiasReLU")},
        ["init"],
        "init",
        "warn",
        "activations",
        "dead ReLUs at init",
    ),
    "tanh_saturated_by_init": (
        {"model": _m("BigInitTanh")},
        ["init"],
        "init",
        "warn",
        "activations",
        "act (tanh",
    ),
    "one_logit_column_against_flat_targets": (
        # https://github.com/APPFL/APPFL/issues/60 (one output unit, target.reshape(-1, 1))
        {"model": _m("MLP", outputs=1), "data": BINARY, "loss": BCEL},
        ["init"],
        "init",
        "fail",
        "target_range",
        "squeeze the output's last dim",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_real_bug_is_named(case, workspace):
    overrides, stages, where, verdict, check_name, words = CASES[case]
    code, summary, _ = run_inprocess(BASE, workspace, overrides=overrides, stages=stages)
    record = stage(summary, where)
    assert record["status"] == verdict, record
    c = check(record, check_name)
    assert c["status"] == verdict, c
    assert words in c["detail"], c["detail"]
    assert code == (1 if verdict == "fail" else 0)
    if verdict != "pass":  # the verdict's reason is this check's sentence, not another's
        assert record["reason"].startswith(c["detail"]), (record["reason"], c["detail"])


def test_random_in_eval_mode_is_not_called_batch_mixing(workspace):
    _, summary, _ = run_inprocess(
        BASE, workspace, overrides={"model": _m("FunctionalDropout")}, stages=EARLY
    )
    bi = stage(summary, "batch_independence")
    assert bi["status"] == "warn"
    assert check(bi, "gradient_isolation")["status"] == "pass"
    assert check(bi, "alone_vs_batch")["status"] == "skip"
    assert "mix" not in bi["reason"]


def test_a_batch_normalised_output_is_not_blamed_on_the_initialisation(workspace):
    # its loss at init is ln(batch) rather than ln(C): "scale down the last layer" would send
    # the person to the wrong line
    _, summary, _ = run_inprocess(
        BASE,
        workspace,
        overrides=CASES["log_softmax_over_the_batch_into_nll_loss"][0],
        stages=["init"],
    )
    at_init = check(stage(summary, "init"), "loss_at_init")
    assert at_init["status"] == "warn"
    assert "the output's form above explains it" in at_init["detail"]
    assert "scale down" not in at_init["detail"]


def test_float_inputs_mixed_in_the_batch_are_not_called_token_ids(workspace):
    # the softmax(dim=0) policy read by batch_independence alone: its inputs are floats
    _, summary, _ = run_inprocess(
        BASE,
        workspace,
        overrides=CASES["softmax_over_the_batch_before_cross_entropy"][0],
        stages=["batch_independence"],
    )
    bi = stage(summary, "batch_independence")
    assert bi["status"] == "fail" and "depends on sample" in bi["reason"]
    assert "token ids" not in bi["reason"] and "embedding" not in bi["reason"]


def test_float64_inputs_from_numpy_are_named_with_the_fix(workspace):
    code, summary, _ = run_inprocess(
        BASE, workspace, overrides={"data": _m("float64_from_numpy")}, stages=["init"]
    )
    reason = stage(summary, "init")["reason"]
    assert code == 1
    assert "the inputs are float64 (numpy's default: torch.from_numpy keeps it)" in reason
    assert "return x.float() from the dataset" in reason


def test_a_one_output_classifier_of_two_classes_is_told_to_output_two(workspace):
    # nn.Linear(hidden, 1) with CrossEntropyLoss and labels 0/1
    code, summary, _ = run_inprocess(
        BASE, workspace, overrides={"model.classes": 1, "data.classes": 2}, stages=["init"]
    )
    detail = check(stage(summary, "init"), "target_range")["detail"]
    assert code == 1
    assert "but the model outputs 1 class (ids 0..0): set the model's output size to 2" in detail


def test_token_batch_mixing_fails_without_gradients_too(workspace):
    _, summary, _ = run_inprocess(
        BASE,
        workspace,
        overrides=CASES["view_instead_of_transpose_on_tokens"][0],
        stages=["batch_independence"],
    )
    alone = check(stage(summary, "batch_independence"), "alone_vs_batch")
    assert alone["status"] == "fail" and "mixes samples" in alone["detail"]


def test_nll_loss_on_softmax_is_negative_and_said_so(workspace):
    _, summary, _ = run_inprocess(
        BASE,
        workspace,
        overrides=CASES["softmax_into_nll_loss_on_tokens"][0],
        stages=["init"],
    )
    detail = check(stage(summary, "init"), "loss_contract")["detail"]
    assert "between -1 and 0" in detail and "use log_softmax" in detail


def test_softmax_floor_is_named_for_ten_classes(workspace):
    _, summary, _ = run_inprocess(
        BASE,
        workspace,
        overrides={
            "model": _m("SoftmaxHead", in_dim=16, outputs=10),
            "data": _m("blobs", classes=10),
        },
        stages=["init"],
    )
    assert (
        "ln(1+(C-1)/e) = 1.46 for 10 classes"
        in check(stage(summary, "init"), "loss_contract")["detail"]
    )


def test_frozen_share_and_optimizer_names(workspace):
    _, summary, _ = run_inprocess(
        BASE, workspace, overrides=CASES["frozen_backbone_trained_from_scratch"][0], stages=["init"]
    )
    detail = check(stage(summary, "init"), "frozen")["detail"]
    assert "% of the parameters" in detail and "only fc" in detail
    _, summary, _ = run_inprocess(
        BASE, workspace, overrides=CASES["optimizer_on_last_layer_only"][0], stages=["init"]
    )
    detail = check(stage(summary, "init"), "optimizer_coverage")["detail"]
    assert "net.0" in detail and "leaves out" in detail


# ---------------------------------------------------------------- healthy, library-built

HEALTHY = {
    # id: (overrides, {check: status} that must hold besides "no fail")
    "resnet_stem_with_batchnorm": (
        {"model": _m("ResNetStem"), "data": _m("images")},
        {"tricks_off": "warn", "frozen": "pass", "activations": "pass"},
    ),
    "transformer_encoder_on_tokens": (
        {"model": _m("TokenTransformer"), "data": TOKENS},
        {"eval_deterministic": "pass", "gradient_isolation": "pass", "alone_vs_batch": "pass"},
    ),
    "lstm_batch_first_on_tokens": (
        {"model": _m("TokenLSTM", batch_first=True), "data": TOKENS},
        {"gradient_isolation": "pass", "alone_vs_batch": "pass"},
    ),
    "breast_cancer_one_logit_bce": (
        {"model": _m("MLP", in_dim=30, outputs=1), "data": _m("breast_cancer"), "loss": BCEL},
        {"data_format": "pass", "loss_at_init": "pass", "input_scale": "pass"},
    ),
    "breast_cancer_one_logit_flat_targets": (
        {
            "model": _m("MLP", in_dim=30, outputs=1, squeeze=True),
            "data": _m("breast_cancer", column=False),
            "loss": BCEL,
        },
        {"target_range": "pass", "class_balance": "pass"},
    ),
    "breast_cancer_unscaled_warns_only": (
        {
            "model": _m("MLP", in_dim=30, outputs=1),
            "data": _m("breast_cancer", scaled=False),
            "loss": BCEL,
        },
        {"input_scale": "warn"},
    ),
    "digits_mixup_soft_labels_with_cross_entropy": (
        {
            "model": _m("MLP", in_dim=64, hidden=64, outputs=10),
            "data": _m("digits_mixup"),
            "loss": CE,
        },
        {"data_format": "pass", "loss_at_init": "pass", "train_val_inputs": "pass"},
    ),
    "log_softmax_with_nll_loss": (
        {"model": _m("MLP", final="log_softmax"), "data": _m("blobs"), "loss": NLL},
        {"loss_contract": "pass", "loss_at_init": "pass"},
    ),
    "regression_without_final_activation": (
        {
            "task": "regression",
            "model": _m("MLP", in_dim=8, outputs=1, squeeze=True),
            "data": _m("regression"),
        },
        {"loss_contract": "pass"},
    ),
}


def _assert_healthy(name: str, workspace) -> None:
    overrides, expect = HEALTHY[name]
    if "breast_cancer" in name or "digits" in name:
        pytest.importorskip("sklearn")
    code, summary, _ = run_inprocess(BASE, workspace, overrides=overrides, stages=EARLY)
    fails = [
        (s["name"], c["name"], c["detail"])
        for s in summary["stages"]
        for c in s["checks"]
        if c["status"] == "fail"
    ]
    assert code == 0 and not fails, fails
    assert [s["name"] for s in summary["stages"]] == EARLY
    statuses = {c["name"]: c["status"] for s in summary["stages"] for c in s["checks"]}
    for name_, status in expect.items():
        assert statuses.get(name_) == status, (name_, statuses.get(name_), summary["stages"])


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_library_built_setup_raises_no_failure(name, workspace):
    _assert_healthy(name, workspace)


@pytest.mark.slow
def test_healthy_setups_pass_with_every_core_busy(workspace):
    burn = "import os\nwhile True: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    try:
        for name in ("resnet_stem_with_batchnorm", "transformer_encoder_on_tokens"):
            _assert_healthy(name, workspace)
    finally:
        for h in hogs:
            h.kill()
            h.wait()


# ---------------------------------------------------------------- metrics on accepted forms


def test_accuracy_and_baseline_for_one_logit_and_soft_labels():
    import torch
    from torch import nn

    from engine.metrics import baseline, evaluate

    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).float()
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, 0.0, 0.0]]))
        model.bias.zero_()
    loader = [(x, y[:, None])]
    m = evaluate(model, loader, nn.BCEWithLogitsLoss(), "classification", torch.device("cpu"))
    assert m["accuracy"] == 1.0  # argmax over one column would say 0 or 1 by the labels' mix
    b = baseline(y[:, None], y[:, None], "classification", 1)
    assert b["accuracy"] == pytest.approx(max(float(y.mean()), 1 - float(y.mean())))
    soft = torch.softmax(torch.randn(64, 5), 1)
    assert baseline(soft, soft.argmax(1), "classification", 5)["accuracy"] > 0


def test_batch_independence_names_a_non_tensor_output(workspace):
    code, summary, _ = run_inprocess(
        BASE, workspace, overrides={"model": _m("Inception")}, stages=["batch_independence"]
    )
    bi = stage(summary, "batch_independence")
    assert code == 1 and bi["status"] == "fail"
    assert "returns a tuple of 2" in bi["reason"] and "return only the main output" in bi["reason"]


def test_non_tensor_outputs_are_described():
    import torch

    from engine.diagnosis.contracts import describe_non_tensor

    class Output(dict):  # what transformers' ModelOutput looks like from outside
        @property
        def logits(self):
            return self["logits"]

    hf = describe_non_tensor(Output(logits=torch.zeros(2, 3), hidden_states=None), "classification")
    assert "return outputs.logits" in hf
    d = describe_non_tensor({"out": torch.zeros(2, 3)}, "segmentation")
    assert "dict" in d and "tensor (2, 3)" in d and "(batch, classes, H, W)" in d
    assert describe_non_tensor(torch.zeros(2), "regression") is None


def test_unscaled_tabular_features_are_named():
    import torch

    from engine.diagnosis.datastats import check_scale
    from engine.torchfree.ladder import InitSettings

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g) * torch.tensor([5.0, 1.0, 0.001])
    c = check_scale(x, InitSettings())
    assert c.status == "warn" and "orders of magnitude" in c.detail
    assert "feature 0" in c.detail and "feature 2" in c.detail
    assert check_scale(torch.randn(256, 3, generator=g), InitSettings()).status == "pass"


def test_a_drifted_val_mean_warns_but_a_different_scale_fails():
    import torch

    from engine.diagnosis.datastats import check_splits
    from engine.torchfree.ladder import InitSettings

    g = torch.Generator().manual_seed(0)
    train = torch.randn(512, 4, generator=g)
    later = torch.randn(256, 4, generator=g) + 3.5  # a later period: same spread, drifted mean
    c = check_splits(train, later, InitSettings())
    assert c.status == "warn" and "shifted from train's" in c.detail and "drifted" in c.detail
    raw = 80 * torch.rand(256, 4, generator=g) + 100  # same data, never normalised
    assert check_splits(train, raw, InitSettings()).status == "fail"
    assert check_splits(train, torch.randn(256, 4, generator=g), InitSettings()).status == "pass"


@pytest.mark.parametrize(
    "shape, words",
    [
        # https://github.com/torchgeo/terratorch/pull/753 ("targets of size: [64, 1, 224, 224]")
        ((2, 1, 8, 8), "keeps a channel dim of 1 — return mask.squeeze(0)"),
        # https://github.com/milesial/Pytorch-UNet/issues/373 ("[1, 215, 245, 3]": "making sure
        # my masks files only had 1 channel and not 3"), open-mmlab/mmsegmentation#3055
        ((2, 8, 8, 3), "the mask was read as a colour image (3 channels last)"),
    ],
)
def test_a_segmentation_mask_of_the_wrong_shape_says_what_happened_to_it(shape, words):
    import torch
    from torch import nn

    from engine.diagnosis.contracts import check_format

    x, y = torch.randn(2, 3, 8, 8), torch.zeros(shape, dtype=torch.long)
    got = check_format("segmentation", x, y, nn.CrossEntropyLoss())
    assert got.status == "fail" and words in got.detail, got.detail
    assert got.detail.startswith("segmentation targets must be (H, W) masks of class ids")
