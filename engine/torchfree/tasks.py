"""What each task means for losses and metrics — torch-free, shared by the engine, the CLI and
the app."""

from __future__ import annotations

TASKS = ("classification", "segmentation", "regression")

DEFAULT_LOSS = {
    "classification": "torch.nn.CrossEntropyLoss",
    "segmentation": "torch.nn.CrossEntropyLoss",
    "regression": "torch.nn.MSELoss",
}
"""The loss a preset gets when it names none."""

MAIN_METRIC = {"classification": "accuracy", "segmentation": "miou", "regression": "mae"}
"""The full-val metric that ranks runs and must beat the input-blind baseline."""

HIGHER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "miou": True,
    "pixel_acc": True,
    "mae": False,
    "val_loss": False,
}
"""Which way each full-val metric improves."""

TASK_METRICS = {
    "classification": ("val_loss", "accuracy", "macro_f1"),
    "segmentation": ("val_loss", "miou", "pixel_acc"),
    "regression": ("val_loss", "mae"),
}
"""What each task's full-val evaluation reports (engine/metrics.py writes these to evals.jsonl)."""
