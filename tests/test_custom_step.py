"""A user's own training step: several models and optimizers, dict batches, models that return
their own loss; named losses in losses.bin and in the app; the ladder's stages on such a step.

The end-to-end example is docs/custom-step.md's own (extracted from the page), so the page
stays true."""

from __future__ import annotations

import math
import re
import struct
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from cockpit.launch import create_run
from engine.context import RunContext, UserCodeError
from engine.loop import Readback, train_loop
from engine.targets import add_import_path
from engine.torchfree import preset as presets
from engine.torchfree.losses import LossesTail, LossesWriter, read_names
from engine.torchfree.preset import PresetError
from tests.conftest import ROOT, run_inprocess, stage


@pytest.fixture(autouse=True)
def _fresh_user_module():
    """Tests here write their own ``mytask.py``: one imported by an earlier test in the same
    worker must not answer for the next one's."""
    import sys

    sys.modules.pop("mytask", None)
    yield
    sys.modules.pop("mytask", None)


DOC = ROOT / "docs" / "custom-step.md"


def _doc_block(title: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"```\w+ title={re.escape(title)}\n(.*?)```", text, re.S)
    assert m, f"docs/custom-step.md has no block titled {title}"
    return m.group(1)


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))


def _context(folder: Path, workspace: Path, yaml_name: str, overrides=None) -> RunContext:
    add_import_path(folder)
    preset = presets.load(folder / yaml_name, overrides or {})
    run = create_run(workspace, preset, overrides=overrides or {}, stages=["train"])
    return RunContext(preset, run, ["train"], run.request())


# ---------------------------------------------------------------- a model's own loss

OWN_LOSS = """
import torch
from torch import nn
from torch.utils.data import TensorDataset


class Classifier(nn.Module):
    '''Returns its own loss when given labels, as Hugging Face models do.'''

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorDataset(x[:240], y[:240]), TensorDataset(x[240:], y[240:])
"""


def test_a_model_returning_its_own_loss_trains_without_a_loss_key(tmp_path, workspace):
    _write(
        tmp_path,
        {
            "ownloss.py": OWN_LOSS,
            "own.yaml": """
                model: {_target_: ownloss.Classifier}
                data: {_target_: ownloss.make_data}
                optimizer: {_target_: torch.optim.Adam, lr: 1.0e-2}
                batch_size: 32
            """,
        },
    )
    ctx = _context(tmp_path, workspace, "own.yaml")
    assert ctx.custom is not None and ctx.custom.kind == "own_loss"
    model = ctx.build_model()
    result = train_loop(
        ctx,
        model,
        ctx.build_optimizer(model),
        ctx.train_batches(),
        steps=60,
        val_batches=ctx.val_batches(),
    )
    assert result.stopped == "steps" and len(result.val_losses) == 60
    head, tail = sum(result.train_losses[:5]) / 5, sum(result.train_losses[-5:]) / 5
    assert tail < 0.6 * head  # it learned through model(x, labels=y).loss
    # the same model with a loss: key is the ordinary loss(model(x), y) path again
    _write(
        tmp_path,
        {"own2.yaml": (tmp_path / "own.yaml").read_text() + "loss: {_target_: torch.nn.MSELoss}\n"},
    )
    assert _context(tmp_path, workspace, "own2.yaml").custom is None


@pytest.mark.slow
def test_a_hugging_face_model_with_dict_batches_walks_the_ladder(tmp_path, workspace):
    # BertForSequenceClassification built from a config (nothing downloaded), fed dict batches
    # {"input_ids", "attention_mask", "labels"} as the Trainer feeds it: model(**batch).loss
    pytest.importorskip("transformers")
    _write(
        tmp_path,
        {
            "hftask.py": """
                import torch
                from torch.utils.data import Dataset
                from transformers import BertConfig, BertForSequenceClassification


                def tiny_bert():
                    cfg = BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=16, num_labels=2)
                    return BertForSequenceClassification(cfg)


                class Tokens(Dataset):
                    # label: does token 7 occur in the sequence
                    def __init__(self, n, seed):
                        g = torch.Generator().manual_seed(seed)
                        self.ids = torch.randint(1, 20, (n, 12), generator=g)
                        self.labels = (self.ids == 7).any(1).long()

                    def __len__(self):
                        return len(self.ids)

                    def __getitem__(self, i):
                        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                                "labels": self.labels[i]}


                def make_data():
                    return Tokens(256, 0), Tokens(64, 1)
            """,
            "hf.yaml": """
                model: {_target_: hftask.tiny_bert}
                data: {_target_: hftask.make_data}
                optimizer: {_target_: torch.optim.AdamW, lr: 1.0e-3, weight_decay: 0.0}
                batch_size: 16
                device: cpu
                stages: [init, batch_independence, overfit_one]
                overfit_one: {steps: 150}
            """,
        },
    )
    code, summary, _ = run_inprocess(tmp_path / "hf.yaml", workspace)
    assert code == 0, summary
    assert stage(summary, "init")["status"] in ("pass", "warn")
    checks = {c["name"]: c for c in stage(summary, "init")["checks"]}
    assert "dict of input_ids" in checks["batch_format"]["detail"]
    assert checks["tricks_off"]["status"] == "warn"  # BERT's dropout is named, as the recipe asks
    assert stage(summary, "batch_independence")["status"] == "skip"
    assert stage(summary, "overfit_one")["status"] == "pass"


# ---------------------------------------------------------------- mistakes, in one sentence

MISTAKES = """
import torch
from torch import nn
from torch.utils.data import TensorDataset


def make_data():
    x = torch.randn(64, 4)
    return TensorDataset(x, x.sum(1, keepdim=True)), TensorDataset(x[:16], x[:16].sum(1, keepdim=True))


def detached(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean().detach()


def per_sample(model, batch):
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean(), "parts": (model(x) - y).abs()}
"""


def _mistake_preset(tmp_path: Path, extra: str) -> Path:
    _write(
        tmp_path,
        {
            "mist.py": MISTAKES,
            "m.yaml": "model: {_target_: torch.nn.Linear, in_features: 4, out_features: 1}\n"
            "data: {_target_: mist.make_data}\ntask: regression\n" + extra,
        },
    )
    return tmp_path / "m.yaml"


def test_a_step_whose_loss_lost_its_graph_says_so(tmp_path, workspace):
    _mistake_preset(tmp_path, "step: {_target_: mist.detached}\n")
    ctx = _context(tmp_path, workspace, "m.yaml")
    model = ctx.build_model()
    with pytest.raises(UserCodeError, match=r"has no gradient .* give it an `optimizers` argument"):
        train_loop(ctx, model, ctx.build_optimizer(model), ctx.train_batches(), steps=2)


def test_a_step_returning_a_loss_per_sample_says_which(tmp_path, workspace):
    _mistake_preset(tmp_path, "step: {_target_: mist.per_sample}\n")
    ctx = _context(tmp_path, workspace, "m.yaml")
    model = ctx.build_model()
    with pytest.raises(UserCodeError, match=r"loss 'parts' of shape \(\d+, 1\): .*one number"):
        train_loop(ctx, model, ctx.build_optimizer(model), ctx.train_batches(), steps=2)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("step: {_target_: mist.detached, gamma: 2}\n", "takes no argument 'gamma'"),
        ("gpus: 2\nstep: {_target_: mist.detached}\n", "runs in one process"),
    ],
)
def test_step_preset_mistakes_name_the_key(tmp_path, workspace, extra, message):
    _mistake_preset(tmp_path, extra)
    with pytest.raises(PresetError, match=message):
        _context(tmp_path, workspace, "m.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "model: {_target_: a.B}\nmodels: {G: {_target_: a.G}}\ndata: {_target_: a.d}\n",
            "both model and models",
        ),
        (
            "models: {G: {_target_: a.G}}\noptimizers: {D: {_target_: torch.optim.Adam}}\n"
            "data: {_target_: a.d}\n",
            r"optimizers\.D names no model of models",
        ),
        ("models: {G: 3}\ndata: {_target_: a.d}\n", "models.G must be a mapping with a _target_"),
        ("models: []\ndata: {_target_: a.d}\n", "a mapping of names to"),
    ],
)
def test_models_and_optimizers_are_validated(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PresetError, match=message):
        presets.load(path)


def test_models_without_a_step_are_refused(tmp_path, workspace):
    _write(
        tmp_path,
        {
            "mist.py": MISTAKES,
            "m.yaml": "models: {G: {_target_: torch.nn.Linear, in_features: 4, out_features: 1}}\n"
            "data: {_target_: mist.make_data}\n",
        },
    )
    with pytest.raises(PresetError, match="several models need a step"):
        _context(tmp_path, workspace, "m.yaml")


# ---------------------------------------------------------------- named losses, host side


def test_named_losses_ride_the_readback_on_the_cpu():
    rb = Readback(torch.device("cpu"))
    g = torch.tensor(0.25, requires_grad=True) * 2
    (row,) = rb.push(1, 0.0, 0.1, 1e-3, g, None, {"G": g, "D": 0.75})
    assert row.train_loss == 0.5 and row.losses == {"G": 0.5, "D": 0.75}


def test_losses_bin_round_trip_with_names_appearing_late(tmp_path):
    w = LossesWriter(tmp_path)
    w.append(2, [(1, {"G": 1.0, "D": -0.5}), (2, {"G": 0.9, "D": -0.4})])
    w.append(3, [(3, {"G": 0.8, "W": 2.0})])  # a new name in a later stage
    assert read_names(tmp_path) == ["G", "D", "W"]
    tail = LossesTail(tmp_path)
    got = {k: (list(xs), list(ys)) for k, (xs, ys) in tail.read_new().items()}
    assert got == {
        (2, "G"): ([1.0, 2.0], [1.0, 0.9]),
        (2, "D"): ([1.0, 2.0], [-0.5, -0.4]),
        (3, "G"): ([3.0], [0.8]),
        (3, "W"): ([3.0], [2.0]),
    }
    assert tail.read_new() == {}
    # half a record (a writer's os.write seen mid-way): the reader waits for the rest
    record = struct.pack("<dddd", 4, 4, 2, 1.5)
    with open(tmp_path / "losses.bin", "ab", buffering=0) as f:
        f.write(record[:10])
        assert tail.read_new() == {}
        f.write(record[10:])
    assert {k: list(ys) for k, (_, ys) in tail.read_new().items()} == {(4, "W"): [1.5]}
    # a second writer (another engine process on the same folder) keeps the names' indices
    LossesWriter(tmp_path).append(5, [(5, {"D": 0.5})])
    assert {k: list(ys) for k, (_, ys) in tail.read_new().items()} == {(5, "D"): [0.5]}
    assert read_names(tmp_path) == ["G", "D", "W"]


def test_the_app_draws_every_named_loss(tmp_path):
    from cockpit.app.history import RunHistory
    from cockpit.app.widgets.curves import metric_figure, metric_legend
    from engine.torchfree.runfolder import RunFolder, StepsAppender, write_json_atomic

    folder = RunFolder(tmp_path)
    write_json_atomic(folder.file("summary.json"), {"stage_names": ["init", "generalize"]})
    steps = StepsAppender(folder.file("steps.bin"))
    for i in range(1, 51):
        steps.append(i, 0.0, 1.0, 1.0 / i, math.nan, 0.0, 0.01, math.nan, 1e-3)
    LossesWriter(tmp_path).append(
        1, [(i, {"G": 2.0 - i / 50, "D": -1.0 + i / 100}) for i in range(1, 51)]
    )
    history = RunHistory(folder)
    history.poll()
    shown = history.stages["generalize"]
    assert list(shown.losses) == ["G", "D"]
    assert len(metric_figure(shown).lines) == 2
    legend = metric_legend(shown).plain
    assert "G " in legend and "D " in legend
    # live: new records arrive on the next poll
    LossesWriter(tmp_path).append(1, [(51, {"G": 0.5, "D": 0.1})])
    assert history.poll() and len(history.stages["generalize"].losses["G"]) == 51


# ---------------------------------------------------------------- the ladder, end to end


@pytest.mark.slow
def test_the_documented_gan_walks_the_ladder_and_logs_both_losses(tmp_path, workspace):
    (tmp_path / "mytask.py").write_text(_doc_block("mytask.py"))
    (tmp_path / "gan.yaml").write_text(
        _doc_block("gan.yaml") + "overfit_few: {steps: 300}\nspeed: {batches: 5}\n"
    )
    code, summary, run = run_inprocess(tmp_path / "gan.yaml", workspace)
    assert code == 0, summary
    statuses = {s["name"]: s["status"] for s in summary["stages"]}
    speed = stage(summary, "speed")
    if speed["status"] == "warn":  # a machine crowded by other tests: the stage says so
        assert "not judged" in speed["reason"], speed["reason"]
        statuses["speed"] = "pass"
    assert statuses == {
        "init": "pass",
        "batch_independence": "skip",
        "overfit_one": "pass",
        "overfit_few": "pass",
        "generalize": "pass",
        "speed": "pass",
    }
    assert "G " in stage(summary, "init")["reason"] and "D " in stage(summary, "init")["reason"]
    skipped = [c for c in stage(summary, "init")["checks"] if c["status"] == "skip"]
    assert skipped and "custom training step" in skipped[0]["detail"]
    assert read_names(run) == ["G", "D"]
    named = LossesTail(run).read_new()
    gen = summary["stage_names"].index("generalize")
    assert len(named[(gen, "G")][0]) == stage(summary, "generalize")["metrics"]["steps"]
    assert len(named[(gen, "D")][0]) == stage(summary, "generalize")["metrics"]["steps"]


def test_a_step_that_never_trains_one_model_fails_init(tmp_path, workspace):
    # the second optimizer is never stepped and its model never gets a gradient: a GAN step
    # that forgot D (the classic "frozen weights, optimizer on one layer" silent bug, as in
    # TrainCheck-Evaluation-Workloads' silent-issue-detection cases)
    (tmp_path / "mytask.py").write_text(
        _doc_block("mytask.py")
        + textwrap.dedent(
            """

            def g_only(models, batch, optimizers=None):
                fake = models["G"](batch["mask"])
                l1 = (fake - batch["image"]).abs().mean()
                if optimizers is not None:
                    optimizers["G"].zero_grad()
                    l1.backward()
                    optimizers["G"].step()
                return {"loss": l1}
            """
        )
    )
    (tmp_path / "gan.yaml").write_text(
        _doc_block("gan.yaml").replace(
            "step: {_target_: mytask.gan_step, adv_weight: 0.01}", "step: {_target_: mytask.g_only}"
        )
        + "stages: [init]\n"
    )
    code, summary, _ = run_inprocess(tmp_path / "gan.yaml", workspace)
    assert code == 1
    init = stage(summary, "init")
    assert init["status"] == "fail" and "without a finite gradient (D.net" in init["reason"]


class _Pairs(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i)), "y": torch.tensor(float(i))}


def test_optimizers_act_as_one_for_the_loop_and_checkpoints():
    from engine.custom_step import Optimizers

    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    opts = Optimizers(
        {
            "G": torch.optim.SGD(a.parameters(), lr=0.1),
            "D": torch.optim.Adam(b.parameters(), lr=0.01),
        }
    )
    assert opts.G is opts["G"] and list(opts) == ["G", "D"]
    assert [g["lr"] for g in opts.param_groups] == [0.1, 0.01]
    (a(torch.ones(1, 2)).sum() + b(torch.ones(1, 2)).sum()).backward()
    opts.step()
    state = opts.state_dict()
    fresh = Optimizers(
        {
            "G": torch.optim.SGD(a.parameters(), lr=0.5),
            "D": torch.optim.Adam(b.parameters(), lr=0.5),
        }
    )
    fresh.load_state_dict(state)
    assert fresh["D"].state_dict()["state"][0]["step"] == 1
    assert len(state["param_groups"]) == 2  # side by side, as a warm start compares them


def test_a_warm_start_restores_every_named_optimizer():
    from engine import checkpoint
    from engine.custom_step import Optimizers

    def pair():
        torch.manual_seed(0)
        models = nn.ModuleDict({"G": nn.Linear(2, 1), "D": nn.Linear(2, 1)})
        opts = Optimizers({k: torch.optim.Adam(m.parameters(), lr=0.01) for k, m in models.items()})
        return models, opts

    models, opts = pair()
    models["G"](torch.ones(1, 2)).sum().backward()
    models["D"](torch.ones(1, 2)).sum().backward()
    opts.step()
    saved = {
        "model": models.state_dict(),
        "optimizer": opts.state_dict(),
        "step": 7,
        "optimizer_class": "Optimizers",
    }
    child, child_opts = pair()
    step, note = checkpoint.warm_start(saved, child, child_opts)
    assert step == 7 and "optimizer state" in note and "not" not in note, note
    assert child_opts["G"].state_dict()["state"][0]["step"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_custom_step_logs_its_named_losses_without_a_host_sync(tmp_path, workspace):
    (tmp_path / "mytask.py").write_text(_doc_block("mytask.py"))
    (tmp_path / "gan.yaml").write_text(_doc_block("gan.yaml") + "device: cuda\n")
    ctx = _context(tmp_path, workspace, "gan.yaml")
    models = ctx.build_model()
    optimizers = ctx.build_optimizer(models)
    train, val = ctx.train_batches(), ctx.val_batches()  # dict batches, pinned host memory
    train_loop(ctx, models, optimizers, train, steps=5, val_batches=val)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any implicit host<->device sync raises
    try:
        result = train_loop(ctx, models, optimizers, train, steps=100, val_batches=val)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.steps == 100
    assert all(set(r.losses) == {"G", "D"} and r.gpu_s > 0 for r in result.rows)
    named = LossesTail(ctx.folder.path).read_new()
    assert len(named[(0, "G")][0]) == len(named[(0, "D")][0]) == 105


def test_the_run_view_shows_a_gans_g_and_d_curves(tmp_path):
    """In the app: open a run whose generalize stage logged G and D; the plot under the losses
    draws both, and its legend names them with their last values."""
    import asyncio

    from cockpit.app.screens.run import RunScreen
    from cockpit.app.widgets.curves import CurvesView, MetricPlot
    from cockpit.app.widgets.live_text import LiveText
    from tests.app.conftest import histories_loaded, make_app, wait_until
    from tests.app.workspaces import LADDER, RunSpec, loss_rows, write_run

    workspace = tmp_path / "runs"
    gen = LADDER.index("generalize")
    folder = write_run(
        workspace,
        RunSpec(
            "gan-1",
            verdicts=[(name, "pass", "ok") for name in LADDER[:5]],
            steps=loss_rows(range(1, 201), gen),
        ),
    )
    LossesWriter(folder.path).append(
        gen, [(i, {"G": 1.5 - i / 400, "D": -0.2 - i / 1000}) for i in range(1, 201)]
    )

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: len(app.runs) == 1, what="the run")
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            view = app.screen.query_one(CurvesView)
            assert view.current_stage().name == "generalize"
            assert set(view.current_stage().losses) == {"G", "D"}
            assert app.screen.query_one(MetricPlot).display  # shown although no full-val metrics
            legend = app.screen.query_one("#metric-legend", LiveText)
            text = str(legend.render())
            shown = dict(re.findall(r"([GD]) (-?[\d.]+)", text))
            assert set(shown) == {"G", "D"}, text  # smoothed last values: G ends 1.0, D -0.4
            assert float(shown["G"]) == pytest.approx(1.0, abs=0.05)
            assert float(shown["D"]) == pytest.approx(-0.4, abs=0.05)

    asyncio.run(go())
