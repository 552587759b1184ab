import os
import tempfile

import pytest
import torch

# 2-core CI machine: keep each test process on a fixed, small thread count (overridable).
torch.set_num_threads(int(os.environ.get("REPNAS_TEST_THREADS", "2")))

# The device lock is machine-wide by design (searchspace.device_lock): tests get their own, so they
# never wait for (or hold up) a real search running on the same machine. Subprocesses inherit it.
os.environ["REPNAS_DEVICE_LOCK"] = os.path.join(tempfile.mkdtemp(prefix="repnas-test-"), "device.lock")


@pytest.fixture(autouse=True)
def _no_busy_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole-model timing found busy is retried after 30 s (pruning.latency_table): the CI machine is
    often busy, and the tests that calibrate check decisions, not timings."""
    import pruning.latency_table

    monkeypatch.setattr(pruning.latency_table, "BUSY_PAUSE_S", 0.0)
    import searchspace.budget_of  # so is a --budget-of reference's (searchspace.budget_of)

    monkeypatch.setattr(searchspace.budget_of, "REFERENCE_PAUSE_S", 0.0)
