"""The bench's probe of the disk (``benchmarks/machine.py``): how long a write takes to become
durable, timed where the local database keeps its files, and nothing left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benches import each other as scripts
    import machine

    return machine


def test_a_disk_sync_is_timed_write_and_fdatasync_and_leaves_nothing_behind(
    machine, tmp_path, monkeypatch
):
    synced: list[int] = []
    fdatasync = os.fdatasync

    def slow(fd: int) -> None:  # a disk that takes 3 ms to make a write durable
        time.sleep(0.003)
        synced.append(os.fstat(fd).st_size)
        fdatasync(fd)

    monkeypatch.setattr(machine.os, "fdatasync", slow)
    figures = machine.disk_sync(tmp_path, n=20)
    assert synced == [8192] * 20  # each an 8 KiB write, synced
    assert 3 <= figures["p50_ms"] <= figures["p99_ms"] < 1000
    assert list(tmp_path.iterdir()) == []
    line = machine.describe_disk(figures, figures)
    assert f"p50 {figures['p50_ms']:.2f} ms" in line and "before the stages" in line
