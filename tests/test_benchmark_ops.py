"""benchmarks/ops.py: the harness times every contender in the same rounds, and a peer library
that fails on a shape is reported as failed instead of crashing the run or being dropped
silently."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from tests.scripts import benchmark_script


@pytest.fixture(scope="module")
def ops():
    with benchmark_script("ops") as module:
        yield module


def _raises(x: torch.Tensor, grad: torch.Tensor) -> None:
    raise TypeError("no bfloat16 here\nsecond line")


def _no_gradient(x: torch.Tensor, grad: torch.Tensor) -> None:
    x.detach().softmax(-1)


def test_peers_are_timed_with_the_others_and_failures_are_kept(ops):
    working = ops.backward_of(lambda x, tau: torch.softmax(x / tau, -1))
    contenders = {
        **ops.CONTENDERS,
        "working": working,
        "raises": _raises,
        "silent": _no_gradient,
    }
    times, failed = ops.bench_shape((8, 10), torch.float32, 2, contenders)
    assert set(failed) == {"raises", "silent"}
    assert failed["raises"] == "TypeError: no bfloat16 here"
    assert "no gradient" in failed["silent"]
    for name in [*ops.CONTENDERS, "working"]:
        assert times[name]["ms"] > 0 and times[name]["peak_mb"] >= 0
    assert "raises" not in times and "silent" not in times

    rows = [("(8, 10)", "float32", times)]
    table = ops.peer_table(rows, ["working", "raises"], {("(8, 10)", "float32"): failed})
    header, _, row = table.splitlines()
    assert "working ms" in header and "raises / dg" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "failed"  # the raising peer's time
    assert cells[6] == f"{times['working']['ms'] / times['discograd']['ms']:.1f}x"
    assert ops.failures({("(8, 10)", "float32"): failed})[0].startswith("- raises failed")


def test_a_failing_contender_of_our_own_is_an_error(ops):
    with pytest.raises(TypeError):
        ops.bench_shape((8, 10), torch.float32, 1, {**ops.CONTENDERS, "torch": _raises})


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed (optional)"
)
def test_sass_count_compiles_the_forward_as_a_launch_would(monkeypatch):
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, stated (no warning)
    # benchmarks/sass_count.py compiles for sm_90 with no GPU; the launch-like specialization
    # (aligned pointers, sizes divisible by 16) is what lets the loads be 16 bytes wide.
    with benchmark_script("sass_count") as sass:
        sass.OPCODE = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
        ops, per_thread = sass.forward_case(sass.load_module(None), "float32", 32768, False, 90)
    assert per_thread == 32
    assert "LDG.E.128" in ops and "STG.E.128" in ops
    assert 40 < len(ops) / per_thread < 200  # about 80 an element
