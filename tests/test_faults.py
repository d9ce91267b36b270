"""Faults of cluster jobs injected into real 2-process torchrun runs (bench/faults.py), a lost
node of a 2-node run among them: each run ends by itself, or with the same command, with the
weights of the uninterrupted run.

Minutes, not seconds: marked `faults`, left out of the default `pytest` run and run by the
second pytest of .ci/run (`python -m pytest -m "faults or e2e or browser"`).
"""

from __future__ import annotations

import pytest
import torch

from bench import faults

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(torch.cuda.is_available(), reason="CPU processes (gloo), bit-exact"),
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    data = faults.dataset(out)
    return data, out, faults.reference(data, out)


@pytest.mark.parametrize("scenario", faults.SCENARIOS)
def test_a_run_survives_the_fault_with_the_uninterrupted_weights(uninterrupted, scenario):
    data, out, expected = uninterrupted
    row = faults.checked_scenario(scenario, data, out, expected)
    assert row["finished"] and row["exit_codes"][-1] == 0, row
    assert row["weights_equal_uninterrupted"], row
    assert row["steps_trained_again"] <= 1, row  # a checkpoint after every step
    assert row["fell_back"] == (scenario == "corrupt"), row
    if scenario == "node_lost":
        assert row["exit_codes"][0] == 0, row  # the node that stayed finished the run too
