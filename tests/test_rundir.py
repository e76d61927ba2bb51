"""Run directory: exclusive lock, atomic outputs, stage cache."""
from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from emcopilot.pipeline.rundir import RunDirectory, RunLockedError

from emcopilot.core.files import atomic_path, digest, read_json, write_json


def hold_lock(root, ready, release):
    with RunDirectory(root):
        ready.set()
        release.wait(30)


def test_second_run_on_same_out_is_refused(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid}"):
            with RunDirectory(tmp_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with RunDirectory(tmp_path):  # free again
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    with RunDirectory(tmp_path):
        pass


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "particles.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["particles.csv"]


def test_stage_cache_reuses_and_recomputes(tmp_path):
    calls = []

    def compute(directory):
        calls.append(directory)
        write_json(directory / "out.json", {"n": len(calls)})

    with RunDirectory(tmp_path) as run:
        key = digest({"a": 1})
        directory, reused = run.run_stage("s@1", key, compute)
        assert not reused and read_json(directory / "out.json") == {"n": 1}
        assert run.run_stage("s@1", key, compute)[1] is True
        assert run.run_stage("s@1", digest({"a": 2}), compute)[1] is False
        assert run.run_stage("s@1", digest({"a": 2}), compute, force=True)[1] is False
    assert len(calls) == 3


def test_interrupted_stage_is_recomputed(tmp_path):
    def crash(directory):
        (directory / "partial").write_text("x")
        raise KeyboardInterrupt

    with RunDirectory(tmp_path) as run:
        with pytest.raises(KeyboardInterrupt):
            run.run_stage("s@1", "k", crash)
        assert not run.cached("s@1", "k")
        directory, reused = run.run_stage("s@1", "k", lambda d: None)
        assert not reused and not (directory / "partial").exists()


def test_errors_csv_cells_cannot_start_a_spreadsheet_formula(tmp_path):
    import csv

    from emcopilot.core.files import write_errors

    write_errors(tmp_path / "errors.csv", [("=cmd|'/c calc'!A1.png", "unreadable"), ("plain.png", "-1 pixels")])
    with open(tmp_path / "errors.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["path", "error"], ["'=cmd|'/c calc'!A1.png", "unreadable"], ["plain.png", "'-1 pixels"]]


def test_a_failed_stage_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import numpy as np

    from emcopilot.core.interfaces import Instances
    from emcopilot.pipeline.stages import _save_instances

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match="No space"):
        _save_instances(tmp_path / "00000.npz", Instances(labels=np.ones((4, 4), np.int32)))
    assert list(tmp_path.iterdir()) == []
