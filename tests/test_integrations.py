"""The Lightning and Hugging Face Trainer callbacks, on the CPU build, with real small models.

Skipped with the reason when the framework does not install here (``pip install
'cockpit[lightning]'`` / ``'cockpit[transformers]'``)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine.torchfree.runfolder import RunFolder, iter_runs
from tests.conftest import ROOT


def _digits(n: int = 512):
    """scikit-learn's 8x8 digits (real data), as float tensors."""
    torch = pytest.importorskip("torch")
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


def test_importing_the_integrations_imports_no_framework() -> None:
    code = (
        "import sys, cockpit.integrations.lightning, cockpit.integrations.huggingface; "
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_lightning_fit_becomes_a_cockpit_run(workspace: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch", reason="pip install 'cockpit[lightning]'")
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from cockpit.integrations.lightning import CockpitCallback

    x, y = _digits()

    class DigitsModule(pl.LightningModule):  # the way Lightning's docs build one
        def __init__(self, lr: float = 0.05, hidden: int = 32):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            loss = nn.functional.cross_entropy(self.net(xb), yb)
            self.log("train_acc", (self.net(xb).argmax(1) == yb).float().mean(), on_step=True)
            return loss

        def validation_step(self, batch, batch_idx):
            xb, yb = batch
            logits = self.net(xb)
            self.log("val_loss", nn.functional.cross_entropy(logits, yb))
            self.log("val_acc", (logits.argmax(1) == yb).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    train = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[384:], y[384:]), batch_size=128)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[CockpitCallback(name="digits-lightning", workspace=str(workspace))],
    )
    trainer.fit(DigitsModule(), train, val)

    (folder,) = iter_runs(workspace)
    summary = folder.summary()
    assert summary["status"] == "passed" and summary["preset"] == "digits-lightning"
    assert summary["overrides"]["lr"] == 0.05 and summary["overrides"]["hidden"] == 32
    cols = folder.steps()
    assert list(cols["step"]) == list(range(1, 37))  # 12 batches x 3 epochs, every one
    assert cols["train_loss"][0] == pytest.approx(math.log(10), abs=0.3)
    assert cols["train_loss"][-1] < cols["train_loss"][0]
    assert cols["lr"][0] == pytest.approx(0.05)
    evals = folder.evals()
    full = [r for r in evals if r.get("kind") != "step"]
    assert [r["step"] for r in full] == [12, 24, 36]  # one per validation epoch
    assert {"val_loss", "accuracy"} <= full[-1].keys()
    assert any("train_acc" in r for r in evals if r.get("kind") == "step")
    assert folder.snapshot().metric_name == "accuracy"


@pytest.mark.slow
def test_hugging_face_trainer_becomes_a_cockpit_run(tmp_path: Path, workspace: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="pip install 'cockpit[transformers]'")
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate")
    import torch
    from torch import nn

    from cockpit.integrations.huggingface import CockpitCallback

    x, y = _digits()

    class Digits(torch.utils.data.Dataset):
        def __init__(self, xs, ys):
            self.xs, self.ys = xs, ys

        def __len__(self):
            return len(self.xs)

        def __getitem__(self, i):
            return {"pixels": self.xs[i], "labels": self.ys[i]}

    class DigitsClassifier(nn.Module):  # any module returning {"loss", "logits"} will do
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, pixels, labels=None):
            logits = self.net(pixels)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=30,
        per_device_train_batch_size=32,
        learning_rate=0.05,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=DigitsClassifier(),
        args=args,
        train_dataset=Digits(x[:384], y[:384]),
        eval_dataset=Digits(x[384:], y[384:]),
        callbacks=[CockpitCallback(name="digits-hf", workspace=str(workspace))],
    )
    trainer.train()

    (folder,) = iter_runs(workspace)
    summary = folder.summary()
    assert summary["status"] == "passed" and summary["preset"] == "digits-hf"
    assert summary["overrides"]["learning_rate"] == 0.05
    cols = folder.steps()
    assert list(cols["step"]) == list(range(1, 31))  # logging_steps=1: every batch
    assert cols["train_loss"][0] == pytest.approx(math.log(10), abs=0.3)
    assert not math.isnan(cols["lr"][0])
    evals = [r for r in folder.evals() if r.get("kind") != "step"]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] * 1.5
    assert RunFolder(folder.path).snapshot().status == "passed"
