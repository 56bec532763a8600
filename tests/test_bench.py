"""The benchmark commands produce their documented JSON (on tiny settings; no timing asserted)."""

import json

import pytest

from dawntrain.cli import main
from dawntrain.config import tomllib  # tomli before Python 3.11


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))


def test_bench_throughput_json(tmp_path, capsys):
    args = [
        "bench",
        "throughput",
        "--set",
        "width=4",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        "--results",
        str(tmp_path),
        "--peak-size",
        "256",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "davidnet" and result["batch_size"] == 8
    assert result["peak_size"] == 256
    names = [r["name"] for r in result["rows"]]
    assert names[:2] == ["reference", "engine"]
    for row in result["rows"]:
        assert set(row) >= {"name", "images_per_s", "gflops", "precision", "layout", "compiled"}
        assert row["images_per_s"] > 0
    assert result["rows"][0]["precision"] == "fp32" and result["rows"][0]["layout"] == "NCHW"
    assert "fp32" in result["peak_gflops"]
    by_route = result["peak_gflops_by_route"]["fp32"]
    assert set(by_route) == {"matmul", "conv1x1"} and min(by_route.values()) > 0
    assert result["peak_gflops"]["fp32"] == max(by_route.values())
    assert len(list(tmp_path.glob("throughput-*.json"))) == 1


def test_peak_routes_compute_the_same_product():
    # The 1x1 convolution over n pixels is an n x n by n x n product: the same FLOPs as the matmul.
    import torch

    from dawntrain.bench.throughput import format_peaks, peak_gflops_by_route

    n = 128
    x = torch.randn(1, n, n // 64, 64, dtype=torch.float64)
    w = torch.randn(n, n, 1, 1, dtype=torch.float64)
    by_conv = torch.nn.functional.conv2d(x, w).reshape(n, n)
    by_matmul = w.reshape(n, n) @ x.reshape(n, n)
    torch.testing.assert_close(by_conv, by_matmul)
    assert set(peak_gflops_by_route(torch.float32, torch.device("cpu"), n, reps=1)) == {
        "matmul",
        "conv1x1",
    }
    old = {"peak_gflops": {"fp32": 180.1, "bf16": 366.3}}  # a result written before the routes
    assert format_peaks(old) == "fp32 180, bf16 366"
    new = {
        "peak_gflops": {"fp32": 430.0},
        "peak_gflops_by_route": {"fp32": {"matmul": 202.0, "conv1x1": 430.0}},
    }
    assert format_peaks(new) == "fp32 430 (matmul 202, conv1x1 430)"


def test_bench_throughput_vs_adds_a_row_with_the_change_and_rows_picks(tmp_path, capsys):
    args = ["bench", "throughput", "--preset", "fast", "--set", "width=4", "-b", "8"]
    args += ["--steps", "1", "--warmup", "0", "--json", "--results", str(tmp_path)]
    args += [
        "--peak-size",
        "256",
        "--vs",
        "ceil_pool=false",
        "--rows",
        "engine ceil_pool=false,engine",
    ]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["name"] for r in rows] == ["engine ceil_pool=false", "engine"]
    assert rows[0]["changes"] == {"ceil_pool": False} and rows[1]["changes"] == {}
    from dawntrain.bench.throughput import changed_engine
    from dawntrain.config import resolve

    both = changed_engine(resolve("fast"), "train_sizes=[24,28],ceil_pool=false")
    assert both.changes == {"train_sizes": [24, 28], "ceil_pool": False}
    # --rows names such a row as it is printed: its list's commas do not split it.
    from dawntrain.bench.throughput import split_top_level

    assert split_top_level(f"engine,{both.name}") == ["engine", both.name]
    assert rows[0]["ratio"] == 1.0
    # Floor pooling's smaller maps: fewer FLOPs per image, so less work per image counted.
    assert rows[0]["gflops"] / rows[0]["images_per_s"] < rows[1]["gflops"] / rows[1]["images_per_s"]


def test_bench_throughput_counts_a_filtered_row_s_kept_share_only(tmp_path, capsys):
    args = ["bench", "throughput", "--preset", "fast", "--set", "width=4", "-b", "8"]
    args += ["--steps", "1", "--warmup", "0", "--json", "--results", str(tmp_path)]
    args += ["--peak-size", "256", "--vs", "filter_keep=0.5,filter_by='last_loss_ratio'"]
    args += ["--rows", "engine,engine filter_keep=0.5 filter_by='last_loss_ratio'"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    plain, half = rows
    assert half["changes"]["filter_keep"] == 0.5
    assert half["step_flops_per_image"] == pytest.approx(
        plain["step_flops_per_image"] / 2, rel=1e-6
    )
    per_image = [r["gflops"] / r["images_per_s"] for r in rows]
    assert per_image[1] == pytest.approx(per_image[0] / 2, rel=0.01)


def test_bench_throughput_rejects_an_unknown_row_or_key(capsys):
    assert main(["bench", "throughput", "--rows", "engine,turbo", "--steps", "1"]) == 2
    assert "turbo" in capsys.readouterr().err
    assert main(["bench", "throughput", "--vs", "ceil_pooling=false", "--steps", "1"]) == 2
    assert "ceil_pool" in capsys.readouterr().err


def test_bench_accuracy_summarizes_runs(tmp_path, capsys):
    args = [
        "bench",
        "accuracy",
        "--data",
        "sample",
        "--runs",
        "2",
        "--epochs",
        "1",
        "--set",
        "width=4",
        "--set",
        "sanity_check=false",
        "--batch-size",
        "500",
        "--target",
        "0.05",
        "--out",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path),
    ]
    assert main(args) == 0
    result = json.loads(next(tmp_path.glob("accuracy-*.json")).read_text())
    assert result["runs"] == 2 and [r["seed"] for r in result["results"]] == [0, 1]
    assert 0 <= result["test_acc"]["min"] <= result["test_acc"]["mean"] <= result["test_acc"]["max"]
    assert result["results"][0]["first_epoch_at_target"] == 1
    assert result["data_from_cache"] is False  # a fresh cache: the decode was timed
    # davidnet at width 4: 1 epoch of 5,000 images x3, one validation and the sanity-free test.
    from dawntrain.analysis.flop_count import flops
    from dawntrain.config import resolve
    from dawntrain.models import model_for

    forward = flops(model_for(resolve("davidnet", sets=["width=4"]), 10), (3, 32, 32))
    assert result["flop_per_run"]["total"] == (3 * 5000 + 1000) * forward
    printed = capsys.readouterr().out
    assert f"PFLOP/run       {result['flop_per_run']['total'] / 1e15:.3f}" in printed
    assert "from the cache" not in printed
    args[args.index("--runs") + 1] = "1"  # the same data again: now the cache answers
    assert main(args) == 0
    assert "read from the cache" in capsys.readouterr().out


def test_bench_ablation_runs_each_row_with_its_change(tmp_path, capsys):
    args = ["bench", "ablation", "--preset", "fast", "--data", "sample", "--epochs", "1"]
    args += ["--set", "width=4", "--set", "sanity_check=false", "--set", "report=false"]
    args += [
        "--batch-size",
        "500",
        "--rows",
        "preset,no whitening,lookahead toggled,other optimizer",
    ]
    args += ["--out", str(tmp_path / "runs"), "--results", str(tmp_path)]
    assert main(args) == 0
    result = json.loads(next(tmp_path.glob("ablation-fast-*.json")).read_text())
    assert [r["name"] for r in result["rows"]] == [
        "preset",
        "no whitening",
        "lookahead toggled",
        "other optimizer",
    ]
    assert result["rows"][1]["changes"] == {"whiten": False}
    # Without whitening the first layer is a trained conv of the same shape: the same FLOPs.
    assert result["rows"][1]["flop_per_run"] == result["rows"][0]["flop_per_run"] > 0
    config = tomllib.loads((tmp_path / "runs/lookahead-toggled/seed0/config.toml").read_text())
    assert config["lookahead"] is True and config["whiten"] is True
    other = tomllib.loads((tmp_path / "runs/other-optimizer/seed0/config.toml").read_text())
    assert other["optimizer"] == "sgd" and other["lookahead"] is True and other["width"] == 4
    printed = capsys.readouterr().out
    assert "no whitening" in printed and "PFLOP" in printed


def test_every_ablation_row_is_a_valid_change_of_the_fast_presets():
    from dawntrain.bench.ablation import ABLATIONS
    from dawntrain.config import apply, resolve, validate

    for preset in ("fast", "fast-sgd"):
        base = resolve(preset)
        for name, changes in ABLATIONS.items():
            changes = changes(base) if callable(changes) else changes
            changed = validate(apply(base, changes, name))
            assert name == "preset" or changed != base, (preset, name)


def test_bench_ablation_rejects_unknown_rows_before_training(tmp_path, capsys):
    args = ["bench", "ablation", "--preset", "fast", "--rows", "preset,no magic"]
    args += ["--out", str(tmp_path / "runs"), "--results", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'no magic'" in err and "no whitening" in err
    assert not (tmp_path / "runs").exists()


def test_throughput_shows_the_dropout_row_only_for_models_with_dropout():
    from dawntrain.bench.throughput import default_variants

    assert "engine-exact-dropout" in [v.name for v in default_variants(dropout=True)]
    assert "engine-exact-dropout" not in [v.name for v in default_variants(dropout=False)]


def test_bench_conv_times_both_paths_per_shape(tmp_path, capsys):
    args = ["bench", "conv", "--shapes", "4x8x4,2x8x2", "--repeats", "1", "--json"]
    assert main([*args, "--results", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["batch"], r["channels"], r["side"]) for r in result["rows"]] == [
        (4, 8, 4),
        (2, 8, 2),
    ]
    assert all(r["library_ms"] > 0 and r["matmul_ms"] > 0 for r in result["rows"])
    assert main([*args[:6], "--precision", "fp32", "--json", "--results", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"
    assert main(["bench", "conv", "--shapes", "4x8"]) == 2
    assert "BATCHxCHANNELSxSIDE" in capsys.readouterr().err


def test_bench_conv_takes_a_presets_own_convolutions(tmp_path, capsys):
    from dawntrain.bench import conv
    from dawntrain.config import resolve

    # The floored fast network: 31x31 after whitening, pooled inside each group to 15, 7, 3.
    shapes = conv.preset_shapes(resolve("fast", None, ["ceil_pool=false"], {}))
    assert shapes == [
        ("groups.0.conv1", (1024, 24, 64, 31)),
        ("groups.0.conv2", (1024, 64, 64, 15)),
        ("groups.1.conv1", (1024, 64, 256, 15)),
        ("groups.1.conv2", (1024, 256, 256, 7)),
        ("groups.2.conv1", (1024, 256, 256, 7)),
        ("groups.2.conv2", (1024, 256, 256, 3)),
    ]
    args = ["bench", "conv", "--preset", "fast", "--set", "batch_size=2", "--set", "width=8"]
    assert main([*args, "--repeats", "1", "--json", "--results", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["layer"] for r in rows][:2] == ["groups.0.conv1", "groups.0.conv2"]
    assert (rows[0]["batch"], rows[0]["channels"], rows[0]["c_out"]) == (2, 24, 8)
    assert all(r["library_gflops"] > 0 for r in rows)
    assert main(["bench", "conv", "--preset", "fast", "--shapes", "2x8x4"]) == 2
    # The table's layer column fits the longest name.
    long = {**rows[0], "layer": "stages.3.blocks.2.bottleneck.conv2"}
    table = conv.format_table({"precision": "fp32", "device": "cpu", "rows": [long]})
    header, row = table.splitlines()[1:3]
    assert row.startswith(long["layer"] + " ")
    assert header.index("batch") + len("batch") == row.index(" 2 ") + 2


def test_ablation_table_columns_line_up_under_long_row_names():
    from dawntrain.bench import ablation

    row = {"test_acc": 0.9, "test_acc_tta": 0.91, "wall_s": 750.0, "flop_per_run": 2.46e14}
    names = ["preset", "whitening bias 0.19 epochs"]
    result = {"preset": "fast-budget", "data": "x", "runs": 1, "rows": []}
    result["rows"] = [{**row, "name": n} for n in names]
    header, *lines = ablation.format_table(result).splitlines()[1:]
    ends = {line.index("0.9000") + len("0.9000") for line in lines}
    assert ends == {header.index("test acc") + len("test acc")}
    assert lines[1].split()[-3:] == ["+0.00", "750", "0.246"]


def test_bench_conv_preset_without_3x3_convolutions_says_so(monkeypatch, capsys):
    from torch import nn

    from dawntrain.bench import conv

    monkeypatch.setattr(conv, "model_for", lambda *a, **k: nn.Conv2d(3, 4, 1))
    assert main(["bench", "conv", "--preset", "fast"]) == 2
    assert "no stride-1 3x3 convolution" in capsys.readouterr().err


@pytest.mark.parametrize("pays", [True, False])
def test_throughput_shows_the_matmul_conv_row_that_the_cpu_kind_calls_for(pays, monkeypatch):
    from dawntrain.bench.throughput import variants_for
    from dawntrain.config import resolve
    from dawntrain.models import conv

    monkeypatch.setattr(conv, "matmul_pays", lambda: pays)

    def names(preset):
        return [v.name for v in variants_for(resolve(preset, sets=["device=cpu"]), 32)]

    # DavidNet's 512 channels at 4x4: the row without the path where the engine takes it, the
    # row with it forced where matmul_pays says this CPU kind is better off without.
    rows = names("davidnet")
    assert ("engine-library-conv" in rows) == pays and ("engine-matmul-conv" in rows) != pays
    fast = names("fast")  # 256 channels: oneDNN everywhere, so neither row
    assert "engine-library-conv" not in fast and "engine-matmul-conv" not in fast
    assert "engine-malloc-default" in fast


def test_bench_profile_splits_the_step_into_phases_and_kinds(tmp_path, capsys):
    from dawntrain.bench.profile import totals

    args = ["bench", "profile", "--preset", "fast", "--set", "width=8", "-b", "16"]
    args += ["--precision", "fp32", "--steps", "2", "--warmup", "1", "--json"]
    assert main(args + ["--results", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    phases, kinds = totals(result, "phase"), totals(result, "kind")
    assert {"forward", "backward", "optimizer", "batching and augmentation"} <= set(phases)
    assert {"convolution", "batchnorm", "pooling", "activation"} <= set(kinds)
    # Muon's Newton-Schulz iterations are matmuls inside the optimizer step.
    assert any(r["phase"] == "optimizer" and r["kind"] == "matmul" for r in result["parts"])
    # Own times do not overlap, so they fit in the profiled wall time; the rest is Python.
    attributed = sum(r["share"] for r in result["parts"])
    assert 0 < attributed <= 1.0 + 1e-3
    assert attributed + result["unattributed_share"] == pytest.approx(1.0, abs=2e-3)
    # The same steps were timed unprofiled, to show what the profiler itself costs.
    assert result["unprofiled_ms_per_step"] > 0 and result["page_faults_per_step"] >= 0
    assert len(list(tmp_path.glob("profile-fast-*.json"))) == 1


def test_profile_kinds_of_operator_names():
    from dawntrain.bench.profile import kind_of

    assert kind_of("aten::convolution_backward") == "convolution"
    assert kind_of("aten::native_batch_norm_backward") == "batchnorm"
    assert kind_of("aten::mm") == "matmul" and kind_of("aten::addmm") == "matmul"
    assert kind_of("aten::max_pool2d_with_indices") == "pooling"
    assert kind_of("aten::gelu_backward") == "activation"
    assert kind_of("aten::clamp_min_") == "activation"  # relu_
    assert kind_of("aten::amax") == "reductions"
    assert kind_of("aten::copy_") == "copies and layout"
    assert kind_of("aten::add_") == "elementwise" and kind_of("aten::nonsense") == "other"


def test_bench_tta_rows_are_what_a_run_with_that_threshold_evaluates(tmp_path, capsys):
    from dawntrain.config import resolve
    from dawntrain.infer.evaluate import evaluate_checkpoint
    from dawntrain.train import fit

    sets = ["width=4", "epochs=1", "batch_size=100", "sanity_check=false", "report=false"]
    sets += ["device=cpu", "precision=fp32", "tta_level=2", "data=sample"]
    fit(resolve("fast", sets=sets, overrides={"out": str(tmp_path / "run"), "quiet": True}))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    args = ["bench", "tta", "--checkpoint", str(ckpt), "--thresholds", "0.3,0.6,0.9"]
    assert main(args + ["--results", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("tta-*.json")).read_text())
    rows = result["rows"]
    assert [r["tta_below"] for r in rows] == [0.3, 0.6, 0.9]
    shares = [r["tta_fraction"] for r in rows]
    assert shares == sorted(shares) and shares[-1] > 0  # one epoch: many images are unsure
    for r in rows:
        got = evaluate_checkpoint(ckpt, device="cpu", tta_below=r["tta_below"])["tta"]
        assert (got["acc"], got["tta_fraction"]) == (r["acc"], r["tta_fraction"])
        assert r["views_per_image"] == 1 + 5 * r["tta_fraction"]
    assert "share with views" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--tta", "0"])  # not a choice: the run's level or another


@pytest.mark.parametrize("preset", ["fast", "fast-budget"])
def test_the_filtering_row_toggles_filtering_at_about_the_same_flops(preset):
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.bench.ablation import ABLATIONS
    from dawntrain.config import apply, resolve, validate
    from dawntrain.models import model_for

    def total(config):
        return run_flops(model_for(config, 10), config, (3, 32, 32), 50_000, 10_000)["total"]

    base = resolve(preset)
    toggled = validate(apply(base, ABLATIONS["data filtering toggled"](base), "row"))
    back = validate(apply(toggled, ABLATIONS["data filtering toggled"](toggled), "row"))
    assert bool(toggled.filter_keep) != bool(base.filter_keep)
    assert back.epochs == base.epochs and back.filter_keep == base.filter_keep
    assert total(toggled) == pytest.approx(total(base), rel=0.06)


def test_the_filtering_row_switches_a_last_loss_ranking_off_into_a_valid_config():
    # A last-loss ranking needs a kept share: switched off, the row goes back to the default
    # filter_by, where it used to leave a config that validate refused.
    from dawntrain.bench.ablation import ABLATIONS
    from dawntrain.config import apply, resolve, validate

    base = resolve("fast-budget", sets=["filter_by='last_loss_ratio'", "filter_keep=0.75"])
    off = validate(apply(base, ABLATIONS["data filtering toggled"](base), "row"))
    assert (off.filter_keep, off.filter_by, off.epochs) == (0.0, "proxy", 8)  # 7.5 epochs' FLOPs


def test_throughput_times_the_rows_windows_in_turn_so_drift_falls_on_each():
    from dawntrain.bench.throughput import interleaved_rates

    log, clock = [], [0.0]

    def step(name, seconds):
        def run():
            log.append(name)
            clock[0] += seconds

        return run

    def timer():
        start = clock[0]
        return lambda: clock[0] - start

    rates = interleaved_rates([step("a", 1.0), step("b", 2.0)], [8, 4], 3, 2, timer)
    assert log == ["a", "a", "b", "b"] * 3
    assert rates == [[8.0] * 3, [2.0] * 3]
