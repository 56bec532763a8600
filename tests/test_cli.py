"""End to end through the command line, on the sample shipped in the package."""

import argparse
import json
import re
import sys

import pytest
import torch

import dawntrain
from dawntrain.cli import build_parser, main
from dawntrain.config import resolve
from dawntrain.train import checkpoint


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))


def test_one_epoch_on_the_sample_writes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            "sample",
            "--epochs",
            "1",
            "--set",
            "width=8",
            "--batch-size",
            "256",
            "--set",
            "checkpoint_name='ep{epoch}-{val_acc:.3f}.pt'",
            "--set",
            "log_every_steps=5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "train_loss" in printed and "val_acc" in printed
    # The table keeps the rates' digits and shows the optimizer's own lr and images/s.
    header = next(line for line in printed.splitlines() if "train_loss" in line).split()
    assert header[:3] == ["epoch", "lr", "step_lr"] and "img/s" in header
    # Outside a terminal (pytest's capture), a line every 5 steps of the 20 on stderr.
    steps = [line for line in captured.err.splitlines() if line.startswith("epoch 1/1 step")]
    assert [line.split()[3] for line in steps] == ["5/20", "10/20", "15/20", "20/20"]
    assert all("img/s" in line and "ETA" in line and " lr " in line for line in steps)
    # The console's lines are kept in the run directory.
    console = (out / "console.log").read_text()
    assert "training images" in console and "train_loss" in console and "run written" in console
    (epoch_file,) = (out / "checkpoints").glob("ep1-*.pt")
    assert (
        epoch_file.name
        == f"ep1-{json.loads((out / 'metrics.jsonl').read_text())['val_acc']:.3f}.pt"
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["epoch"] == 1
    assert set(metrics[0]) >= {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "elapsed_s"}
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "config.toml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["torch"] == torch.__version__

    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt")]) == 0
    assert "accuracy" in capsys.readouterr().out

    # Recipe plots of a run land in it, and say where.
    assert main(["plot", "lr", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"written to {out / 'lr.png'}"
    assert (out / "lr.png").is_file()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dawntrain: error:") and "missing" in err[0]
    assert main(["train", "--set", "widht=3", "--print-config"]) == 2
    assert "did you mean width" in capsys.readouterr().err


def test_print_config_presets_and_summary(capsys):
    assert main(["train", "--preset", "davidnet", "--set", "width=32", "--print-config"]) == 0
    assert "width = 32" in capsys.readouterr().out
    assert main(["presets"]) == 0
    assert "davidnet" in capsys.readouterr().out
    assert main(["summary", "--preset", "davidnet"]) == 0
    out = capsys.readouterr().out
    assert "Trainable params: 6,573,120" in out and "(512, 4, 4)" in out and "(10,)" in out


def test_presets_show_each_files_first_paragraph_and_where_the_rest_is(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "Measured on 2 Xeon-AMX cores" in out  # fast.toml's third comment line
    assert "weight_decay = 0 reproduces it" in out  # davidnet.toml's last
    assert "this tool's per-example convention" not in out  # fast.toml's reasons, after a bare '#'
    assert "1.4648e-3 per example" not in out  # fast-sgd.toml's
    assert "Why not otherwise" not in out  # fast-budget.toml's
    assert re.search(r"reasons for its values: .*presets/NAME\.toml$", out.strip())


def test_summary_columns_title_input_size_and_flops(capsys):
    assert main(["summary", "--preset", "davidnet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "davidnet preset: 32x32 input, 10 classes"
    assert lines[2].split() == ["Layer", "Type", "Output", "shape", "Param", "#", "FLOPs"]
    drop = next(line for line in lines if line.startswith("blk1.conv_bn.drop"))
    assert re.match(r"blk1\.conv_bn\.drop\s{2,}BankDropout\s{2,}\(128, 32, 32\)", drop)
    assert any(line.startswith("Forward FLOPs per image: ") for line in lines)
    assert main(["summary", "--preset", "tiny-imagenet-resnet", "--num-classes", "200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny-imagenet-resnet preset, model preact_resnet: 64x64 input")


def test_summary_prints_the_whole_runs_flops_as_the_accuracy_bench_counts_them(capsys):
    from dawntrain.analysis.flop_count import run_flops
    from dawntrain.config import resolve
    from dawntrain.models import model_for

    assert main(["summary", "--preset", "fast", "--run-images", "5000,1000"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    want = run_flops(model_for(resolve("fast"), 10), resolve("fast"), (3, 32, 32), 5000, 1000)
    assert last.startswith("Whole run (10 epochs, 5,000 training and 1,000 test images): ")
    assert f"{want['total'] / 1e15:.3f} PFLOP (train {want['train'] / 1e15:.4f}," in last
    # cifar10 (the preset's source) has its official counts; bad counts are refused.
    assert main(["summary", "--preset", "fast", "--epochs", "8"]) == 0
    assert "8 epochs, 50,000 training and 10,000 test images" in capsys.readouterr().out
    # TTA only for unsure images: the share is known after training, so both ends are printed.
    budget = resolve("fast-budget")
    assert main(["summary", "--preset", "fast-budget", "--run-images", "5000,1000"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    ends = [
        run_flops(model_for(budget, 10), budget, (3, 32, 32), 5000, 1000, tta_fraction=share)
        for share in (1.0, 0.0)
    ]
    assert f"{ends[0]['total'] / 1e15:.3f} PFLOP (" in last
    assert f"{ends[1]['total'] / 1e15:.3f} PFLOP if none takes the views" in last
    with pytest.raises(SystemExit):
        main(["summary", "--run-images", "5000"])
    assert "TRAIN,TEST" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["presets"]) == 141


def walk(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)


def test_every_flag_has_help_and_the_top_level_says_what_the_tool_does(capsys):
    parser = build_parser()
    for p in walk(parser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{p.prog} {'/'.join(action.option_strings) or action.dest}"
    assert "train image classifiers" in parser.description
    assert parser.epilog.count("dawntrain ") >= 4
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"dawntrain {dawntrain.__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "lr / batch_size" in text and "per example" in text  # the two lr conventions
    assert "(default: benchmarks/results)" in next(
        p.format_help() for p in walk(parser) if p.prog.endswith("bench conv")
    )


def test_the_names_people_type_are_flags_and_aliases(capsys):
    args = ["train", "--preset", "fast", "--lr", "1e-3", "--wd", "0.01", "-b", "64", "--tta", "1"]
    args += ["--tensorboard", "-j", "3", "--set", "learning_rate=2e-3", "--print-config"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lr = 0.001\n" in out and "weight_decay = 0.01\n" in out  # flags win over --set
    assert "batch_size = 64\n" in out and "tta_level = 1\n" in out and "workers = 3\n" in out
    assert "tensorboard = true" in out
    assert main(["train", "--weight-decay", "0.02", "--set", "bs=32", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "weight_decay = 0.02\n" in out and "batch_size = 32\n" in out
    # An unknown key with no close match points to the key list instead of dumping it.
    assert main(["train", "--set", "mixup=0.2", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--print-config" in err and "width" not in err


def test_resume_fails_before_any_data_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "no-such-data")  # a run that got as far as loading would say so
    assert main(["train", "--preset", "fast", "--data", missing, "--resume"]) == 2
    assert "no run under ./runs has a checkpoint" in capsys.readouterr().err
    run = tmp_path / "runs" / "davidnet-1"
    state = {"config": resolve("davidnet").to_dict(), "epoch": 1, "step_in_epoch": 0}
    checkpoint.save(run / "checkpoints" / "last.pt", state)
    assert main(["train", "--preset", "fast", "--data", missing, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume last needs --out RUN" in err and "runs/davidnet-1" in err
    # Another preset is named as such, before the data loads and before any batch-size check.
    args = ["train", "--preset", "fast", "--out", str(run), "--resume", "last", "--data", missing]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a 'davidnet' run, not 'fast'" in err and "no-such-data" not in err
    assert "batch" not in err.split("resume it")[0]
    assert main(["train", "--preset", "davidnet", "--set", "width=8", "--resume", str(run)]) == 2
    assert "another config (width: checkpoint 64 vs now 8)" in capsys.readouterr().err


def test_plots_of_a_recipe_need_a_run_or_an_out(capsys):
    assert main(["plot", "lr", "--preset", "fast"]) == 2
    assert "give a RUN directory or --out FILE.png" in capsys.readouterr().err
