"""Memory handling of the fused C++ CPU kernel: huge-page hints on large outputs.

Outputs of 32 MiB or more (glibc maps each afresh, so every call pays a page fault per 4 KiB
page on first touch) are advised with madvise(MADV_HUGEPAGE) before the kernel writes them.
The hint must change nothing in the results: the large path is checked bit for bit against
small calls where the kernel's definitions allow it (the noise of a prefix of rows, the
backward row by row) and against the defining formulas on the kernel's own noise elsewhere.
On Linux with transparent huge pages enabled ("always" or "madvise"), the output's memory must
be advised ("hg" in /proc/self/smaps) and get huge pages; a control tensor filled by torch
without the hint gets none in "madvise" mode, so the check can fail.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from tests.test_kernels import fast_cpu, seed_tensor  # noqa: F401 (fast_cpu: autouse fixture)

ops = torch.ops.discograd
THP = Path("/sys/kernel/mm/transparent_hugepage")
LARGE = 32 << 20  # bytes: the kernel's threshold for the hint
HUGE = 2 << 20  # bytes per huge page
# 2100 x 4096 float32 = 34.4 MB: just above the threshold.
ROWS, COLS = 2100, 4096


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so that equality is exact (NaN included)."""
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


@pytest.fixture(scope="module")
def large_case():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, COLS, generator=gen) * 2
    x[5, 100:] = -math.inf  # a masked row tail
    x[1500, ::2] = -math.inf  # and a masked row in the advised interior
    assert x.nbytes >= LARGE
    seed = seed_tensor(-987654321)
    return x, seed


# --------------------------------------------------------------------------------------------
# Same results on the large (advised) path.


def test_large_noise_matches_small_calls_and_its_law(large_case):
    _, seed = large_case
    big = ops.gumbel_noise(seed, ROWS, COLS, torch.float32)
    assert big.nbytes >= LARGE
    # The noise depends on the flat index only, so a prefix of rows is a small call.
    rows = 200  # 3.3 MB: heap memory, no hint
    assert_same_bits(big[:rows], ops.gumbel_noise(seed, rows, COLS, torch.float32))
    # The whole tensor (mostly the advised interior) follows Gumbel(0, 1): finite, in the
    # documented range, mean Euler's gamma and variance pi^2 / 6 within 4 standard errors.
    assert torch.isfinite(big).all()
    assert big.min() >= -2.86 and big.max() <= 17.34
    n = big.numel()
    mean, var = big.double().mean().item(), big.double().var().item()
    assert abs(mean - 0.5772156649) < 4 * math.sqrt(math.pi**2 / 6 / n)
    # Variance of the sample variance: (mu4 - sigma^4) / n, with mu4 = 5.4 sigma^4 (Gumbel).
    sigma2 = math.pi**2 / 6
    assert abs(var - sigma2) < 4 * math.sqrt(4.4 * sigma2**2 / n)


def test_large_forward_matches_small_prefix_and_formula(large_case):
    x, seed = large_case
    tau = 0.7
    soft = ops.gumbel_softmax(x, seed, tau, None)
    hard, soft_h = ops.gumbel_softmax_hard(x, seed, tau, None)
    assert soft.nbytes >= LARGE
    assert_same_bits(soft_h, soft)
    # A prefix of rows sees the same flat noise indices: bit-identical to a small call.
    rows = 200
    assert_same_bits(soft[:rows], ops.gumbel_softmax(x[:rows].contiguous(), seed, tau, None))
    hard_small, _ = ops.gumbel_softmax_hard(x[:rows].contiguous(), seed, tau, None)
    assert_same_bits(hard[:rows], hard_small)
    # Everywhere: the definition on the kernel's own noise.
    scores = x + ops.gumbel_noise(seed, ROWS, COLS, torch.float32)
    torch.testing.assert_close(soft, torch.softmax(scores / tau, -1), rtol=1e-5, atol=1e-7)
    assert torch.equal(hard, torch.nn.functional.one_hot(scores.argmax(-1), COLS).float())
    assert (soft[1500, ::2] == 0).all() and (soft[5, 100:] == 0).all()


def test_large_backward_matches_row_blocks(large_case):
    x, seed = large_case
    tau = 0.7
    y = ops.gumbel_softmax(x, seed, tau, None)
    g = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(4))
    tau_rows = torch.rand(ROWS, generator=torch.Generator().manual_seed(5)) + 0.2
    for tr, want_tau_grad in ((None, False), (tau_rows, True)):
        t = 1.0 if tr is not None else tau
        gx, gt = ops.gumbel_softmax_backward(g, y, t, tr, want_tau_grad)
        assert gx.nbytes >= LARGE
        # The backward is row by row: blocks of 300 rows (4.9 MB) take the small path.
        for r0 in range(0, ROWS, 300):
            part = slice(r0, r0 + 300)
            tr_part = tr[part].contiguous() if tr is not None else None
            gx_part, gt_part = ops.gumbel_softmax_backward(
                g[part].contiguous(), y[part].contiguous(), t, tr_part, want_tau_grad
            )
            assert_same_bits(gx[part], gx_part)
            if want_tau_grad:
                assert_same_bits(gt[part], gt_part)
    # Negative control for the comparison itself: another temperature changes the bits.
    gx, _ = ops.gumbel_softmax_backward(g, y, tau, None, False)
    other, _ = ops.gumbel_softmax_backward(
        g[:300].contiguous(), y[:300].contiguous(), 0.8, None, False
    )
    assert not torch.equal(bits(gx[:300]), bits(other))


# --------------------------------------------------------------------------------------------
# The hint itself (Linux, transparent huge pages "always" or "madvise").


def thp_mode(name: str) -> str:
    """The bracketed choice of /sys/kernel/mm/transparent_hugepage/<name>."""
    text = (THP / name).read_text()
    return text[text.index("[") + 1 : text.index("]")]


def mappings(lo: int, hi: int, smaps: Path = Path("/proc/self/smaps")) -> List[Dict[str, object]]:
    """The smaps entries (this process's by default) overlapping the addresses [lo, hi)."""
    out: List[Dict[str, object]] = []
    current: Dict[str, object] = {}
    for line in smaps.read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(v, 16) for v in head.split("-"))
            name = line.split()[5] if len(line.split()) > 5 else ""
            current = {"start": start, "end": end, "name": name, "huge_kb": 0, "flags": []}
            if start < hi and end > lo:
                out.append(current)
        elif head == "AnonHugePages:":
            current["huge_kb"] = int(line.split()[1])
        elif head == "VmFlags:":
            current["flags"] = line.split()[1:]
    return out


def interior(t: torch.Tensor):
    """The 2 MiB-aligned part of a tensor's memory (what the kernel advises)."""
    p = t.data_ptr()
    return (p + HUGE - 1) // HUGE * HUGE, (p + t.nbytes) // HUGE * HUGE


@pytest.fixture
def thp_on():
    if not sys.platform.startswith("linux"):
        pytest.skip("huge-page hints are Linux-only")
    if not (THP / "enabled").exists():
        pytest.skip(
            "this kernel has no transparent huge pages (environment, not a missing feature)"
        )
    mode = thp_mode("enabled")
    if mode == "never":
        pytest.skip(
            "transparent_hugepage is 'never' on this machine, so no hint can take effect "
            "(environment, not a missing feature)"
        )
    return mode


# A fresh process makes the outputs and waits while the parent reads its /proc/<pid>/smaps:
# where a large output lands depends on what the process freed before (glibc reuses free heap
# chunks of any size), so only a clean process says which path the kernel took.
CHILD = """
import json, sys, torch
from discograd import kernels
assert kernels.status()["cpu"]["path"] == "fast"  # loads the C++ kernel
ops = torch.ops.discograd
x, seed = torch.randn(2100, 4096), torch.tensor([7])
soft = ops.gumbel_softmax(x, seed, 0.5, None)
hard, _ = ops.gumbel_softmax_hard(x, seed, 0.5, None)
grad, _ = ops.gumbel_softmax_backward(x, soft, 0.5, None, False)
noise = ops.gumbel_noise(seed, 2100, 4096, torch.float32)
small = ops.gumbel_softmax(x[:100].contiguous(), seed, 0.5, None)
out = dict(soft=soft, hard=hard, grad=grad, noise=noise, small=small)
print(json.dumps({k: [t.data_ptr(), t.nbytes] for k, t in out.items()}))
sys.stdout.flush()
sys.stdin.readline()
"""


def child_mappings(**env: str) -> Dict[str, List[Dict[str, object]]]:
    """The smaps entries under each output of :data:`CHILD` (the 2 MiB-aligned interior of the
    large ones, the whole of ``small``), in a fresh process with ``env`` added."""
    import json
    import os
    import subprocess

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=dict(os.environ, OMP_NUM_THREADS="1", **env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        spans = json.loads(child.stdout.readline())
        smaps = Path(f"/proc/{child.pid}/smaps")
        out = {}
        for name, (ptr, nbytes) in spans.items():
            lo, hi = ptr, ptr + nbytes
            if name != "small":
                lo, hi = (ptr + HUGE - 1) // HUGE * HUGE, (ptr + nbytes) // HUGE * HUGE
            out[name] = mappings(lo, hi, smaps)
            assert out[name], name
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
        return out
    finally:
        child.kill()


def test_large_outputs_are_advised_small_ones_are_not(thp_on):
    maps = child_mappings()
    small = maps.pop("small")
    for name, entries in maps.items():
        # Control: in a clean process glibc maps a 34 MB block afresh (above its largest
        # mmap threshold, 32 MiB, with no free heap chunk that large).
        assert not any(m["name"] == "[heap]" for m in entries), (name, entries)
        assert all("hg" in m["flags"] for m in entries), (name, entries)
    # Below the threshold (1.6 MB): never advised, wherever it lands.
    assert not any("hg" in m["flags"] for m in small), small


def test_fresh_heap_memory_is_never_advised(thp_on):
    """glibc can serve a large output from fresh (never touched) memory at the heap's top.

    With mmap switched off (MALLOC_MMAP_MAX_=0) every output comes from the brk heap, fresh
    pages included, the case a CI machine met by chance: the kernel must leave the heap's
    mapping whole. A control in the same child shows the memory really is the heap.
    """
    for name, entries in child_mappings(MALLOC_MMAP_MAX_="0").items():
        assert all(m["name"] == "[heap]" for m in entries), (name, entries)  # control
        assert not any("hg" in m["flags"] for m in entries), (name, entries)


def test_large_forward_gets_huge_pages(thp_on):
    defrag = thp_mode("defrag")
    if defrag in ("defer", "never"):
        pytest.skip(f"THP defrag is '{defrag}': faults do not wait for a huge page (environment)")
    x = torch.zeros(4096, 6144)  # 96 MiB: more than the heap keeps free, so a fresh mapping
    y = ops.gumbel_softmax(x, seed_tensor(1), 1.0, None)
    lo, hi = interior(y)
    maps = mappings(lo, hi)
    if any(m["name"] == "[heap]" for m in maps):
        pytest.skip("the allocator reused touched heap memory for the output (no faults to save)")
    huge_kb = sum(int(m["huge_kb"]) for m in maps)
    assert huge_kb >= (hi - lo) // 1024 // 2, (huge_kb, (hi - lo) // 1024)
    if thp_on == "madvise":
        # Control: memory torch fills without the hint gets no huge pages in this mode.
        plain = torch.empty(4096, 6144).fill_(1.0)
        lo, hi = interior(plain)
        assert sum(int(m["huge_kb"]) for m in mappings(lo, hi)) == 0
