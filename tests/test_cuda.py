"""CUDA checks (skipped without a GPU; scripts/gpu_check.sh runs them with `-m cuda`): one
engine step on the GPU against the same step on the CPU, a short bf16 and fp16 run, and eval
agreeing with the run's summary."""

import copy
import json
import math

import pytest
import torch

from dawntrain.config import resolve
from dawntrain.engine.build import build
from dawntrain.engine.step import StepStats
from dawntrain.infer.evaluate import evaluate_checkpoint
from dawntrain.runtime.distributed import World
from dawntrain.train import fit
from synthetic import tiny_dataset

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def tiny_config(preset="davidnet", **kw):
    sets = ["width=8", "epochs=2", "batch_size=32", "image_size=16", "dropout=0.0"]
    sets += ["sanity_check=false", "quiet=true", "report=false"]
    return resolve(preset, sets=sets + [f"{k}={v}" for k, v in kw.items()])


@pytest.mark.parametrize("preset", ["davidnet", "fast"])
def test_one_fp32_step_on_the_gpu_matches_the_cpu(preset):
    data = tiny_dataset(size=16)
    runs = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        config = tiny_config(preset, precision="fp32", device=device)
        run = build(config, data, World.single(device))
        if device == "cuda":  # the very same initial weights
            run.model.load_state_dict(copy.deepcopy(runs["cpu"][1]))
        start = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        x, y = next(run.batches(0))
        run.step(StepStats.zeros(run.device), x, y, 0, 0)
        runs[device] = (run, start)
    cpu, gpu = runs["cpu"][0].model.state_dict(), runs["cuda"][0].model.state_dict()
    for k in cpu:
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_short_run_trains_and_eval_prints_what_the_summary_says(tmp_path, precision):
    config = tiny_config("fast", precision=precision, device="cuda", tta_level=1)
    config.out = str(tmp_path)
    final = fit(config, dataset=tiny_dataset(size=16))
    summary = json.loads((tmp_path / "summary.json").read_text())["final"]
    assert summary["test_acc_tta"] == final["test_acc_tta"]
    assert math.isfinite(summary["train_loss"]) and summary["test_acc"] > 0.5
    result = evaluate_checkpoint(tmp_path / "checkpoints" / "last.pt", device="cuda")
    assert result["tta"]["acc"] == summary["test_acc_tta"]
    # steps.jsonl, copied back from the GPU without a sync: 3 steps an epoch, recorded every 5
    # and at each epoch's last, so each record's window is its whole epoch.
    records = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert [r["loss"] for r in records] == [m["train_loss"] for m in metrics]
    assert [r["acc"] for r in records] == [m["train_acc"] for m in metrics]
    assert 0 < records[0]["time"] < records[1]["time"]


@pytest.mark.parametrize("on", [True, False])
def test_cudnn_benchmark_follows_the_config(on):
    config = tiny_config("fast", device="cuda", cudnn_benchmark=str(on).lower())
    build(config, tiny_dataset(size=16))
    assert torch.backends.cudnn.benchmark is on
