"""Reshaping the code must not change what a run computes: five short fixed-seed runs (one
epoch of DavidNet, a few dozen Muon steps of `fast` with TTA, the pre-activation ResNet on 64x64
images, a resumed run and a 2-rank gloo run) give bitwise the weights and metrics recorded in
tests/golden/runs.json for this kind of machine (`python tests/golden_runs.py --record`)."""

import json

import pytest

from golden_runs import GOLDEN, machine_signature, run_cases


def golden_for_this_machine() -> dict:
    recorded = json.loads(GOLDEN.read_text())
    signature = machine_signature()
    if signature not in recorded:
        pytest.skip(
            f"no golden runs recorded for {signature} (recorded: {', '.join(recorded)}); "
            "record them on a commit known to be good with `python tests/golden_runs.py --record`"
        )
    return recorded[signature]


def test_short_runs_give_the_recorded_weights_and_metrics():
    golden = golden_for_this_machine()
    results = run_cases(sorted(golden))
    for name, expected in golden.items():
        got = results[name]
        # Every recorded metric must come back equal; one added since (a new key) is no change
        # to what the run computes, so it does not make the recording stale.
        history = [
            {k: m.get(k) for k in want} for m, want in zip(got["history"], expected["history"])
        ]
        assert len(got["history"]) == len(expected["history"]), name
        assert history == expected["history"], name
        assert {k: got["final"].get(k) for k in expected["final"]} == expected["final"], name
        assert got["weights_sha256"] == expected["weights_sha256"], name
