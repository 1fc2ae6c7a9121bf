"""The intake bench's saturation windows merged (``benchmarks/http_intake.py``): a server's
rate over all its windows, and the percentiles of their latencies mixed."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def http_intake(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benches import each other as scripts
    import http_intake

    return http_intake


def _window(module: ModuleType, ok: int, seconds: float, offset_ms: float) -> Any:
    """A window whose latencies spread evenly over ``offset_ms`` .. ``offset_ms`` + 200 ms:
    at percentile p, ``offset_ms`` + 2p."""
    quantiles = tuple(offset_ms + i for i in range(1, 200))  # every half percent
    p50, p99, most = offset_ms + 100, offset_ms + 198, offset_ms + 200
    return module.Load(ok, ok, seconds, p50, p99, most, quantiles)


def test_windows_merge_into_one_rate_and_the_percentiles_of_their_latencies_mixed(http_intake):
    slow = _window(http_intake, ok=300, seconds=3.0, offset_ms=200)  # 100 a second
    fast = _window(http_intake, ok=900, seconds=3.0, offset_ms=0)  # 300 a second
    merged = http_intake.Load.merged([slow, fast])
    assert (merged.ok, merged.seconds, merged.rate) == (1200, 6.0, 200.0)
    assert merged.max_ms == 400
    # three quarters of the answers took 0-200 ms, a quarter 200-400: the median is at 2/3 of
    # the fast window's spread, the 99th percentile at 96% of the slow one's
    assert merged.p50_ms == pytest.approx(133, abs=2)
    assert merged.p99_ms == pytest.approx(392, abs=2)
    # neither window's own figures, nor their mean: the p99 of the mixture
    assert merged.p99_ms not in (slow.p99_ms, fast.p99_ms, (slow.p99_ms + fast.p99_ms) / 2)


def test_a_window_alone_keeps_what_wrk_said(http_intake):
    only = _window(http_intake, ok=500, seconds=5.0, offset_ms=0)
    figures = only.as_dict()
    assert figures["rate"] == 100.0 and figures["p99_ms"] == 198
    assert "quantiles" not in figures  # kept to merge, not written to the bench's JSON


def test_windows_without_percentiles_merge_into_the_highest_of_their_own(http_intake):
    bare = [
        http_intake.Load(100, 100, 1.0, 20.0, 90.0, 120.0),
        http_intake.Load(100, 100, 1.0, 30.0, 80.0, 100.0),
    ]
    merged = http_intake.Load.merged(bare)
    assert (merged.rate, merged.p50_ms, merged.p99_ms, merged.max_ms) == (100.0, 30.0, 90.0, 120.0)
