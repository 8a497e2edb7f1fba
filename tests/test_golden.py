"""The DiSC loss curve of a fixed tiny run against the committed golden curve (tests/golden/disc_loss_curve.json).

A change to the objective, the packing, the loop or the data path (tokenization, segmentation, split points)
moves this curve: the test then fails with the steps that moved. If the change is intended, regenerate the file
with ``python tests/golden/disc_loss_curve.py --write`` and commit it with the change, saying why it moved.
The tolerance and its justification are in tests/golden/disc_loss_curve.py (RTOL, ATOL).
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import disc_loss_curve  # noqa: E402


@pytest.mark.core
def test_disc_loss_curve_matches_the_golden_file():
    golden = json.loads(disc_loss_curve.GOLDEN.read_text())
    assert len(golden["loss"]) == 32 and golden["loss"][-1] < golden["loss"][0]  # the stored run learned something
    problems = disc_loss_curve.curve_differences(disc_loss_curve.compute_curve(), golden)
    assert not problems, "the DiSC loss curve moved (regenerate with --write only if intended):\n" + "\n".join(problems)
