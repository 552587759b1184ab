"""Pruning outputs: paths checked before any work, model and report written together, latency interleaved."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

import dscnn
import pruning.run as run_module
from dscnn.checkpoint import remove_stale_temps, temp_path
from pruning.outputs import write_together
from pruning.resrep import main
from pruning.timing import compare_latency
from searchspace.device_lock import DeviceLock
from tests.pruning.tiny import tiny_overrides

FAST = ["--no-progress", "--train-per-class", "4", "--val-per-class", "2", "--batch-size", "20", "--epochs", "2",
        "--warmup-epochs", "0"]


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return dscnn.save_checkpoint(tmp_path / "r.pt", dscnn.create_model("resnet20", **tiny_overrides("resnet20")))


@pytest.mark.parametrize("case", ["out under a file", "report is a folder", "out is a folder"])
def test_bad_output_paths_fail_before_any_work(tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path)
    (tmp_path / "file").write_text("x")
    out = {"out under a file": tmp_path / "file" / "p.pt", "report is a folder": tmp_path / "p.pt",
           "out is a folder": tmp_path / "dir.pt"}[case]
    if case == "report is a folder":
        (tmp_path / "p.json").mkdir()
    if case == "out is a folder":
        out.mkdir()

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded the model before checking the output paths")

    monkeypatch.setattr(run_module, "_load", no_work)
    assert main([str(ckpt), "--target-flops", "0.5x", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and str(tmp_path) in err


def test_a_failing_report_leaves_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _checkpoint(tmp_path)

    def broken(self: object, path: Path) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module.PruneReport, "write_json", broken)
    with pytest.raises(OSError, match="No space"):
        main([str(ckpt), "--target-flops", "0.5x", "--out", str(tmp_path / "p.pt"), "--no-latency", *FAST])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.pt"]  # no .pt, no report, no temp


def test_write_together_and_stale_temps(tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    stale = target.with_name(".m.pt.999999999-dead.tmp")  # what a kill during a write leaves
    stale.write_bytes(b"half")
    old_style = target.with_name(".m.pt.k3j2h1.tmp")  # tempfile.mkstemp's name, from an older writer
    old_style.write_bytes(b"half")
    live = temp_path(target)  # this process is alive: its temp stays
    assert sorted(remove_stale_temps(target)) == sorted([stale, old_style]) and live.exists()
    live.unlink()
    write_together([(target, lambda p: p.write_bytes(b"model")), (tmp_path / "m.json", lambda p: p.write_text("{}"))])
    assert target.read_bytes() == b"model" and json.loads((tmp_path / "m.json").read_text()) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]


def test_checkpoints_get_the_permissions_of_a_normal_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = _checkpoint(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_latency_is_compared_interleaved_under_the_device_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dscnn.side_by_side as side_by_side

    calls: list[str] = []
    medians = iter([10.0, 5.0, 5.0, 10.0, 10.0, 8.0])  # before, after, after, before, before, after

    def fake(model: torch.nn.Module, settings: object) -> object:
        calls.append(model.name)  # type: ignore[arg-type]
        lock_file = os.open(tmp_path / "device.lock", os.O_RDWR)
        import fcntl
        with pytest.raises(BlockingIOError):  # held exclusively while timing
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(lock_file)
        ms = next(medians)
        return dscnn.LatencyResult(median_ms=ms, min_ms=ms, max_ms=ms, repeat_medians_ms=(ms,), throughput_ips=1.0,
                                   peak_memory_mb=None, runs_timed=1, noisy=False)

    monkeypatch.setattr(side_by_side, "measure_latency_ms", fake)
    before, after = torch.nn.Identity(), torch.nn.Identity()
    before.name, after.name = "before", "after"  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="pruned model: repeats disagree"):
        result = compare_latency(before, after, dscnn.LatencySettings(repeats=3), DeviceLock(tmp_path / "device.lock"))
    assert calls == ["before", "after", "after", "before", "before", "after"]
    assert result.before.median_ms == 10.0 and result.after.median_ms == 5.0 and result.change == pytest.approx(-0.5)
    assert not result.before.noisy and result.after.noisy  # 5, 5, 8: more than 20% apart


def test_report_prints_the_change_and_flags_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "p.pt"
    assert main([str(ckpt), "--target-flops", "0.5x", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["latency_change"] == pytest.approx(report["after"]["latency_ms"] / report["before"]["latency_ms"] - 1)
    assert isinstance(report["latency_noisy"], bool) and set(report["latency"]) == {"before", "after"}
    assert f"latency {report['latency_change']:+.1%}" in text and "interleaved" in text
    assert ("NOISY" in text) == report["latency_noisy"]
