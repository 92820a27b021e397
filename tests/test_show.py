"""The batch before the net: the engine's batch snapshot, `cockpit show RUN`, the app's tab.

"Visualize just before the net" is the first rule of data debugging in Karpathy's recipe
(karpathy.github.io/2019/04/25/recipe): the decoded, augmented, collated tensors — not the
files on disk. Cases here are the quickstart's shapes (images, masks), scikit-learn's digits as
tabular rows (real data), and a Hugging Face-style dict batch of token ids.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch.utils.data import DataLoader

from cockpit.show import draw_batch, image_cells, render, to_ansi
from engine.batches import kind_of, snapshot, write_batches
from engine.torchfree.runfolder import RunFolder, read_json
from tests.conftest import PRESETS, cockpit

sys.path.insert(0, str(PRESETS))
import shapes  # the presets' own module


def first(dataset, batch_size=32, shuffle=False):
    return next(iter(DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)))


def fake_ctx(folder: RunFolder, train, val, task="classification"):
    return types.SimpleNamespace(
        folder=folder,
        task=task,
        train_loader=lambda: DataLoader(
            train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
        ),
        val_loader=lambda: DataLoader(val, batch_size=32),
    )


def run_folder(tmp_path, run_id="quickstart-20300317-053320-ab12", status="running") -> RunFolder:
    from engine.torchfree.runfolder import write_json_atomic

    folder = RunFolder(tmp_path / run_id)
    folder.path.mkdir(parents=True)
    write_json_atomic(folder.file("run.json"), {"run_id": run_id, "created": 1_900_000_000.0})
    folder.write_summary({"run_id": run_id, "preset": "quickstart", "status": status, "stages": []})
    return folder


def test_the_engine_writes_the_first_train_and_val_batch(tmp_path):
    train, val = shapes.classification(n_train=64, n_val=40)
    folder = run_folder(tmp_path)
    write_batches(fake_ctx(folder, train, val))
    snap = read_json(folder.file("batches") / "train.json")
    x, y = snap["tensors"]
    assert (x["name"], x["kind"], x["shape"], x["dtype"]) == (
        "input",
        "image",
        [32, 1, 24, 24],
        "float32",
    )
    assert (y["kind"], y["shape"], y["dtype"]) == ("labels", [32], "int64")
    assert snap["classes"] == list(shapes.SHAPES) and snap["structure"] == "(input, target)"
    assert len(x["values"]) == 8 and len(x["values"][0][0]) == 24
    assert x["channels"][0]["mean"] == pytest.approx(float(train.tensors[0].mean()), abs=0.05)
    val_snap = read_json(folder.file("batches") / "val.json")
    assert val_snap["tensors"][1]["values"] == val.tensors[1][:32].tolist()  # val: in order


def test_a_broken_loader_never_breaks_the_run(tmp_path, capsys):
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise OSError("disk gone")

    folder = run_folder(tmp_path)
    write_batches(fake_ctx(folder, Broken(), Broken()))
    assert "could not write the batch snapshot: OSError: disk gone" in capsys.readouterr().out


def test_kinds_of_tensors_and_a_dict_batch_of_tokens():
    assert kind_of(torch.zeros(2, 3, 8, 8)) == "image"
    assert kind_of(torch.zeros(2, 8, 8, dtype=torch.long)) == "mask"
    assert kind_of(torch.zeros(2, dtype=torch.long)) == "labels"
    assert kind_of(torch.zeros(2, 16)) == "table"
    # a Hugging Face-style batch: {"input_ids", "attention_mask", "labels"}
    batch = {
        "input_ids": torch.randint(0, 30522, (4, 12)),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 1, 0]),
    }
    snap = snapshot(batch, "train", "classification", 4)
    assert snap["structure"] == "{input_ids, attention_mask, labels}"
    kinds = {t["name"]: t["kind"] for t in snap["tensors"]}
    assert kinds == {"input_ids": "tokens", "attention_mask": "tokens", "labels": "labels"}
    text = to_ansi(draw_batch(snap, 80, color=False), color=False)
    ids = " ".join(str(v) for v in batch["input_ids"][0].tolist())
    assert f"[0] {ids}"[:70] in text


def test_tabular_rows_from_scikit_learn_digits_print_as_numbers():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:32], dtype=torch.float32) / 16
    snap = snapshot((x, torch.tensor(d.target[:32])), "train", "classification", 32)
    assert snap["tensors"][0]["kind"] == "table" and len(snap["tensors"][0]["channels"]) == 32
    text = to_ansi(draw_batch(snap, 100, color=False), color=False)
    assert "input: table (32, 64) float32" in text and "column 0:" in text
    assert "  [0]       0       0   0.312   0.812   0.562  0.0625" in text  # the first digit's row
    assert "target: labels (32,) int64" in text


def test_a_big_image_is_strided_down_and_says_so():
    snap = snapshot((torch.rand(2, 3, 100, 100), torch.tensor([0, 1])), "val", "x", 2)
    img = snap["tensors"][0]
    assert img["stride"] == 3 and len(img["values"][0][0]) == 34 and len(img["channels"]) == 3
    text = to_ansi(draw_batch(snap, 80, color=True), color=True)
    assert "(RGB, every 3th pixel)" in text


def test_a_clean_square_is_drawn_as_a_square():
    """No noise, one shape: the shading characters trace it cell by cell (2 pixels a cell)."""
    x, _, mask, _ = shapes.draw(1, 24, seed=3, noise=0.0)
    sample = x[0].tolist()
    cells = image_cells(sample, 0.0, float(x.max()), color=False)
    assert len(cells) == 12 and all(len(line) == 24 for line in cells)
    for r, line in enumerate(cells):
        for c, (ch, _, _) in enumerate(line):
            covered = bool(mask[0, 2 * r : 2 * r + 2, c].any())
            assert (ch != " ") == covered, (r, c)


def test_masks_get_one_colour_per_class(tmp_path):
    train, _ = shapes.segmentation(n_train=16, n_val=16)
    snap = snapshot(first(train, 4), "train", "segmentation", 4)
    snap["classes"] = train.classes
    lines = draw_batch(snap, 80, color=True)
    colours = {fg for line in lines for ch, fg, _ in line if ch == "▀"}
    mask = snap["tensors"][1]
    assert mask["kind"] == "mask" and set(mask["classes"]) <= set(range(6))
    assert (
        len(colours) >= 3
    )  # background and at least two shapes' classes in 4 images + the image greys
    text = to_ansi(lines, color=False)
    assert "classes" in text and "background" in text


def test_cockpit_show_prints_the_batches_headless(tmp_path):
    ws = tmp_path / "runs"
    train, val = shapes.classification(n_train=64, n_val=40)
    folder = run_folder(ws)
    write_batches(fake_ctx(folder, train, val))
    r = cockpit("show", "quickstart-2030", "--color", "never", "--width", "80", workspace=ws)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "train batch · (input, target) · batch size 32" in out and "val batch" in out
    assert "values -0." in out and "shown black..white (grey)" in out
    assert "in this batch: circle×" in out
    assert any(name in out for name in shapes.SHAPES)
    assert max(len(line) for line in out.splitlines()) <= 80
    empty = run_folder(ws, "other-20300317-053320-cd34", status="queued")
    r = cockpit("show", empty.run_id, workspace=ws)
    assert r.returncode == 1 and "no batch snapshot yet" in r.stdout and "this run is" in r.stdout
    assert render(empty).startswith(empty.run_id)


def test_cockpit_show_stays_torch_free():
    import subprocess

    from tests.conftest import ROOT

    code = "import sys, cockpit.show; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_batch_tab_at_80x24(tmp_path, snap_compare):
    """The quickstart's shapes in half blocks in the run view's batch tab (5)."""
    from tests.app.conftest import make_app, wait_until

    ws = tmp_path / "runs"
    train, val = shapes.classification(n_train=64, n_val=40)
    folder = run_folder(ws, status="passed")
    write_batches(fake_ctx(folder, train, val))

    async def before(pilot):
        from cockpit.app.screens.run import RunScreen

        await wait_until(pilot, lambda: len(pilot.app.runs) == 1, what="the run")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, RunScreen), what="run view")
        await pilot.press("5")
        await pilot.pause(0.5)

    assert snap_compare(make_app(ws), terminal_size=(80, 24), run_before=before)


def test_the_batch_view_waits_for_a_queued_run(tmp_path):
    from cockpit.app.widgets.batch_view import BatchView

    folder = run_folder(tmp_path, status="queued")
    view = BatchView(folder)
    view.update = lambda content: setattr(view, "shown", content)  # no app needed
    view.load()
    assert not view.loaded and "no batch yet" in str(view.shown)
    train, val = shapes.classification(n_train=64, n_val=40)
    write_batches(fake_ctx(folder, train, val))
    view.load()
    assert view.loaded and "train batch" in str(view.shown)
