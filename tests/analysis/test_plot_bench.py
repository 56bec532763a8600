"""Benchmark charts: each kind read from its content, the plotted numbers checked against the
JSON, bad files refused with the file's name; the project's own results all chart."""

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.analysis import plot_bench
from dawntrain.cli import main
from dawntrain.errors import DataError

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

THROUGHPUT = {
    "preset": "fast",
    "batch_size": 64,
    "device": "cpu (2 threads)",
    "torch": "2.x",
    "rows": [
        {"name": "reference", "images_per_s": 50.0, "precision": "fp32", "ratio": 1.0},
        {"name": "engine", "images_per_s": 150.0, "precision": "bf16", "ratio": 3.0},
    ],
    "peak_gflops": {"fp32": 100.0},
}


def seeds(*accs):
    return [{"seed": i, "test_acc": a, "test_acc_tta": a + 0.01} for i, a in enumerate(accs)]


ABLATION = {
    "preset": "fast",
    "runs": 3,
    "config": {},
    "rows": [
        {"name": "preset", "changes": {}, "test_acc": 0.9, "test_acc_tta": 0.91,
         "results": seeds(0.89, 0.9, 0.91)},
        {"name": "no whitening", "changes": {"whiten": False}, "test_acc": 0.88,
         "test_acc_tta": 0.89, "results": seeds(0.87, 0.88, 0.89)},
    ],
}  # fmt: skip
ACCURACY = {"preset": "fast", "runs": 2, "test_acc": {"mean": 0.9}, "results": seeds(0.89, 0.91)}
CONV = {
    "device": "cpu",
    "precision": "bf16",
    "rows": [
        {"batch": 8, "channels": 512, "side": 4, "library_ms": 10.0, "matmul_ms": 5.0,
         "speedup": 2.0},
    ],
}  # fmt: skip
DATA = {
    "machine": {"cpu": "cpu"},
    "workers": 2,
    "datasets": {
        "cifar": {"images": 10, "convert_img_per_s": 100.0, "read_verify_rec_per_s": 1e5,
                  "records_decode_img_per_s": 300.0, "folder_decode_img_per_s": 400.0},
    },
}  # fmt: skip


def write(path: Path, result) -> Path:
    path.write_text(json.dumps(result))
    return path


def test_each_kind_is_read_from_its_content():
    kinds = [plot_bench.bench_kind(r) for r in (THROUGHPUT, ABLATION, ACCURACY, CONV, DATA)]
    assert kinds == ["throughput", "ablation", "accuracy", "conv", "data"]
    assert plot_bench.bench_kind({"rows": [{"x": 1}]}) is None
    assert plot_bench.bench_kind([1, 2]) is None


def test_throughput_bars_are_images_per_second_with_the_ratio(tmp_path):
    fig = plot_bench.figure_bench([(tmp_path / "throughput-x.json", "throughput", THROUGHPUT)])
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [50.0, 150.0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["reference · fp32", "engine · bf16"]
    assert [t.get_text().split() for t in ax.texts] == [["50", "×1.00"], ["150", "×3.00"]]
    assert "throughput: fast, batch 64" in ax.get_title()


def test_ablation_points_are_means_with_the_seeds_spread(tmp_path):
    fig = plot_bench.figure_bench([(tmp_path / "ablation-x.json", "ablation", ABLATION)])
    ax = fig.axes[0]
    plain, tta = ax.containers[:2]  # errorbar containers: test acc, with TTA
    x, _ = plain.lines[0].get_data()
    np.testing.assert_allclose(x.astype(float), [0.9, 0.88])
    segments = plain.lines[2][0].get_segments()  # the horizontal error bars
    spread = [seg[1][0] - seg[0][0] for seg in segments]
    expected = statistics.stdev([0.89, 0.9, 0.91])
    np.testing.assert_allclose(spread, [2 * expected] * 2)
    np.testing.assert_allclose(tta.lines[0].get_data()[0].astype(float), [0.91, 0.89])
    # The preset row's accuracies as dashed lines.
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--") == [
        0.9,
        0.91,
    ]


def test_accuracy_files_share_a_panel_with_each_seed_and_the_mean(tmp_path):
    other = {**ACCURACY, "preset": "fast-wide", "results": seeds(0.92)}
    fig = plot_bench.figure_bench(
        [
            (tmp_path / "accuracy-fast-1.json", "accuracy", ACCURACY),
            (tmp_path / "accuracy-fast-wide-2.json", "accuracy", other),
        ]
    )
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 1
    ax = shown[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "fast\n1\n2 seed(s)",
        "fast-wide\n2\n1 seed(s)",
    ]
    means = sorted(float(t.get_text()) for t in ax.texts)
    assert means == pytest.approx(sorted([0.9, 0.91, 0.92, 0.93]))


def test_conv_and_data_panels(tmp_path):
    fig = plot_bench.figure_bench(
        [(tmp_path / "conv-1.json", "conv", CONV), (tmp_path / "data-1.json", "data", DATA)]
    )
    conv, data = fig.axes[:2]
    assert sorted(p.get_width() for p in conv.patches) == [5.0, 10.0]
    assert conv.texts[0].get_text().strip() == "×2.00"
    assert sorted(p.get_width() for p in data.patches) == [100.0, 300.0, 400.0, 1e5]
    assert data.get_xscale() == "log"


TTA = {
    "checkpoint": "runs/x", "tta_level": 2, "plain_acc": 0.90, "tta_acc": 0.91,
    "rows": [
        {"tta_below": 0.5, "tta_fraction": 0.2, "acc": 0.905, "views_per_image": 2.0, "changed": 3},
        {"tta_below": 0.9, "tta_fraction": 0.9, "acc": 0.91, "views_per_image": 5.5, "changed": 5},
    ],
}  # fmt: skip


def test_tta_panel_is_accuracy_against_the_threshold_with_its_views(tmp_path):
    assert plot_bench.bench_kind(TTA) == "tta"
    ax = plot_bench.figure_bench([(tmp_path / "tta-1.json", "tta", TTA)]).axes[0]
    assert list(ax.lines[0].get_xdata()) == [0.5, 0.9]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([90.5, 91.0])
    assert [line.get_ydata()[0] for line in ax.lines[1:]] == pytest.approx([90.0, 91.0])
    assert [t.get_text() for t in ax.texts] == ["2.00", "5.50"]


def test_cli_writes_beside_the_first_file_or_to_out(tmp_path, capsys):
    first = write(tmp_path / "throughput-a.json", THROUGHPUT)
    second = write(tmp_path / "accuracy-b.json", ACCURACY)
    assert main(["plot", "bench", str(first), str(second)]) == 0
    assert capsys.readouterr().out.strip() == f"written to {tmp_path / 'throughput-a.png'}"
    with Image.open(tmp_path / "throughput-a.png") as img:
        assert img.format == "PNG"
    out = tmp_path / "sub" / "chart.png"
    assert main(["plot", "bench", str(second), "--out", str(out)]) == 0
    assert out.is_file()


def test_bad_files_are_refused_by_name(tmp_path, capsys):
    unknown = write(tmp_path / "mystery.json", {"hello": 1})
    assert main(["plot", "bench", str(unknown)]) == 2
    err = capsys.readouterr().err
    assert "mystery.json" in err and "throughput, ablation, accuracy, conv, data" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="broken.json is not JSON"):
        plot_bench.plot_bench([broken])
    with pytest.raises(DataError, match="missing.json does not exist"):
        plot_bench.plot_bench([tmp_path / "missing.json"])
    lacking = {**THROUGHPUT, "rows": [{"name": "reference", "images_per_s": 1.0}, {"x": 1}]}
    with pytest.raises(DataError, match="short.json lacks a field"):
        plot_bench.plot_bench([write(tmp_path / "short.json", lacking)])


def test_the_projects_own_results_all_chart(tmp_path):
    files = sorted(RESULTS.glob("*.json"))
    assert files, RESULTS
    for path in files:
        plot_bench.load_bench(path)  # every one has a kind
    assert plot_bench.plot_bench(files, tmp_path / "all.png").is_file()
