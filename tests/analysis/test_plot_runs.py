"""Figures of runs from hand-written metrics.jsonl and steps.jsonl: the data each one plots
checked against the records, the commands' files and their errors."""

import json

import numpy as np
import pytest
from PIL import Image

from dawntrain.analysis import plot_runs
from dawntrain.analysis.plot_runs import RunData
from dawntrain.cli import main
from dawntrain.errors import DataError

FAST_RATES = {"filters": 0.17, "weights": 8.5e-4, "norm": 0.054, "whiten_bias": 0.054}


def metrics(epochs=3, offset=0.0, elapsed=True):
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "lr": 0.1 * (epochs - e), "train_loss": 2.0 / e + offset}
        row.update(train_acc=0.3 * e - offset, val_loss=2.2 / e, val_acc=0.25 * e - offset)
        row.update(train_s=9.0, epoch_s=10.0 + e)
        if elapsed:
            row["elapsed_s"] = sum(10.0 + k for k in range(1, e + 1)) + 0.5
        rows.append(row)
    return rows


def steps(epochs=3, per_epoch=6, every=2, rates=None, seed=0):
    """Records as a run writes them: every `every` steps of an epoch and at its last."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(epochs):
        for s in range(1, per_epoch + 1):
            if s % every and s != per_epoch:
                continue
            step = e * per_epoch + s
            lr = {k: v * (1 - step / (epochs * per_epoch + 1)) for k, v in (rates or {}).items()}
            loss = float(2.0 * np.exp(-step / 10) + rng.normal(0, 0.05))
            rows.append(
                {"step": step, "epoch": e + 1, "lr": lr, "loss": loss, "acc": 0.5, "time": step / 3}
            )
    return rows


def write_run(path, metric_rows=None, step_rows=None, preset="fast", final=None, optimizer="muon"):
    path.mkdir(parents=True)
    if metric_rows is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metric_rows))
    if step_rows is not None:
        (path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in step_rows))
    (path / "config.toml").write_text(
        f'preset = "{preset}"\noptimizer = "{optimizer}"\nconvention = "per_example"\n'
    )
    (path / "summary.json").write_text(json.dumps({"final": final or {}}))
    return path


def lines_by_label(fig):
    return {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}


def test_accuracy_against_time_plots_the_cumulative_seconds_of_each_run():
    a = RunData("a", metrics(), final={"test_acc": 0.8, "test_acc_tta": 0.82})
    b = RunData("b", metrics(elapsed=False, offset=0.1))  # an old log: epoch_s only
    fig = plot_runs.figure_time([a, b])
    lines = lines_by_label(fig)
    val = [label for label in lines if ": val" in label]
    assert val == ["a: val (last 0.7500)", "b: val (last 0.6500)"]  # one line a run
    assert list(lines[val[0]].get_xdata()) == [m["elapsed_s"] for m in a.metrics]
    assert list(lines[val[1]].get_xdata()) == [11.0, 23.0, 36.0]  # the running sum of epoch_s
    assert list(lines[val[1]].get_ydata()) == [m["val_acc"] for m in b.metrics]
    test = lines["a: test, TTA 0.8200"]
    assert list(test.get_xdata()) == [a.metrics[-1]["elapsed_s"]] and list(test.get_ydata()) == [
        0.82
    ]
    # Epochs without validation are left out; runs of more than 10 minutes are in minutes.
    long = metrics()
    long[0]["val_acc"] = None
    for m in long:
        m["elapsed_s"] *= 60
    fig = plot_runs.figure_time([RunData("long", long)])
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [m["elapsed_s"] / 60 for m in long[1:]]
    assert "minutes" in fig.axes[0].get_xlabel()
    with pytest.raises(DataError, match="no elapsed_s or epoch_s"):
        plot_runs.figure_time([RunData("old", [{"epoch": 1, "val_acc": 0.5}])])


def test_runs_with_the_same_name_are_told_apart_by_their_parent(tmp_path):
    dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "b" / "other"]
    assert plot_runs.run_labels(dirs) == ["a/run", "b/run", "other"]


def test_curves_of_several_runs_overlay_them_with_the_mean_of_a_shared_preset():
    runs = [
        RunData("s0", metrics(offset=0.0), config={"preset": "fast"}),
        RunData("s1", metrics(offset=0.1), config={"preset": "fast"}),
        RunData("d", metrics(offset=0.3), config={"preset": "davidnet"}),
    ]
    fig = plot_runs.figure_curves_of_runs(runs)
    loss, acc, lr = fig.axes
    # Each run's train and val line in the loss and accuracy panels, its lr; the mean of the two
    # fast runs (not of davidnet, alone in its preset) in loss and accuracy.
    assert len(loss.get_lines()) == len(acc.get_lines()) == 2 * 3 + 2 and len(lr.get_lines()) == 3
    mean_val_acc = acc.get_lines()[-1]  # drawn last, under the runs
    expected = [(0.25 * e + 0.25 * e - 0.1) / 2 for e in (1, 2, 3)]
    np.testing.assert_allclose(mean_val_acc.get_ydata(), expected)
    labels = [t.get_text() for t in acc.get_legend().get_texts()]
    assert labels == ["s0", "s1", "d", "mean of 2 fast runs", "train", "val"]
    # No preset shared: no mean.
    fig = plot_runs.figure_curves_of_runs(runs[1:])
    assert len(fig.axes[0].get_lines()) == 4


def reference_moving_mean(values, window):
    half = window // 2
    return [np.mean(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def test_steps_plot_each_record_its_moving_mean_and_the_epoch_boundaries():
    records = steps(epochs=4, per_epoch=60, every=2)  # 120 records: a moving mean of 5
    records[7]["loss"] = None  # only skipped steps in that window: left out
    fig = plot_runs.figure_steps([RunData("r", steps=records)])
    ax = fig.axes[0]
    raw, smooth = ax.get_lines()[:2]
    kept = [r for r in records if r["loss"] is not None]
    assert list(raw.get_xdata()) == [r["step"] for r in kept]
    assert list(raw.get_ydata()) == [r["loss"] for r in kept]
    np.testing.assert_allclose(
        smooth.get_ydata(), reference_moving_mean([r["loss"] for r in kept], 5)
    )
    boundaries = [line.get_xdata()[0] for line in ax.get_lines()[2:]]
    assert boundaries == [60, 120, 180]  # between epochs, not after the last
    assert "every 2 steps" in ax.get_title() and "moving mean of 5" in ax.get_title()
    # Several runs: one bold line each, in the legend.
    fig = plot_runs.figure_steps(
        [RunData("a", steps=records), RunData("b", steps=steps(4, 60, 2, seed=1))]
    )
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b"]


def test_rates_merge_groups_that_share_them_and_go_log_when_they_differ_by_orders():
    davidnet = steps(rates={"weights": 1e-3, "norm": 1e-3})
    fig = plot_runs.figure_rates(RunData("d", steps=davidnet, config={"optimizer": "sgd"}))
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "weights, BatchNorm (SGD)"]
    assert list(line.get_ydata()) == [r["lr"]["weights"] for r in davidnet]
    assert ax.get_yscale() == "linear"
    fast = steps(rates=FAST_RATES)
    for r in fast:
        if r["epoch"] == 3:  # whiten_bias_epochs = 2: frozen from epoch 3 on
            r["lr"]["whiten_bias"] = 0.0
    fig = plot_runs.figure_rates(RunData("f", steps=fast, config={"optimizer": "muon"}))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "conv filters (Muon)",
        "other weights (SGD)",
        "BatchNorm (SGD)",
        "whitening bias (SGD); 0 from step 14",
    ]
    muon = lines_by_label(fig)["conv filters (Muon)"]
    assert list(muon.get_xdata()) == [r["step"] for r in fast]
    assert list(muon.get_ydata()) == [r["lr"]["filters"] for r in fast]


def png(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 100
    return path


def test_commands_write_into_the_first_run_and_say_where(tmp_path, capsys):
    final = {"test_acc": 0.7}
    a = write_run(tmp_path / "x" / "seed", metrics(), steps(rates=FAST_RATES), final=final)
    b = write_run(tmp_path / "y" / "seed", metrics(offset=0.1), steps(rates=FAST_RATES, seed=1))
    for kind in ("time", "curves", "steps"):
        assert main(["plot", kind, str(a), str(b)]) == 0
        assert capsys.readouterr().out.strip() == f"written to {a / f'{kind}.png'}"
        png(a / f"{kind}.png")
    assert main(["plot", "rates", str(a), "--out", str(tmp_path / "r.png")]) == 0
    assert capsys.readouterr().out.strip() == f"written to {tmp_path / 'r.png'}"
    png(tmp_path / "r.png")
    # One run: the curves figure of plots.figure_curves (three panels, train and val).
    assert main(["plot", "curves", str(b)]) == 0
    png(b / "curves.png")


def test_a_run_without_the_records_is_told_what_to_do(tmp_path, capsys):
    old = write_run(tmp_path / "old", metrics())  # no steps.jsonl
    assert main(["plot", "steps", str(old)]) == 2
    err = capsys.readouterr().err
    assert "steps.jsonl does not exist" in err and "--set loss_every_steps=N" in err
    assert main(["plot", "rates", str(old)]) == 2
    assert "loss_every_steps" in capsys.readouterr().err
    empty = write_run(tmp_path / "empty", None, [])
    assert main(["plot", "time", str(empty)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    assert main(["plot", "steps", str(empty)]) == 2
    assert "steps.jsonl is empty" in capsys.readouterr().err
    with pytest.raises(DataError, match="no elapsed_s"):
        plot_runs.plot_time([write_run(tmp_path / "untimed", [{"epoch": 1, "val_acc": 0.5}])])
