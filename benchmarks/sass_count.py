"""SASS instruction counts of the Triton kernels, compiled for a GPU that need not be present.

The forward kernel is bound by its instruction count on an H100 (benchmarks/RESULTS.md, "Ops on
a GPU"), so the static count per element of its straight-line single-pass form is a proxy that
any machine can measure: Triton compiles for ``--arch`` (default sm_90, the H100/H200) with its
bundled ptxas, and cuobjdump lists the machine code. It is a proxy, not a time: it ignores
latency, occupancy and memory, and spills (STL/LDL, local memory) cost more than their count.

    python benchmarks/sass_count.py                     # this tree's kernels
    python benchmarks/sass_count.py --module OLD.py     # another version of triton_gs.py

Needs Triton (``pip install triton``), no GPU.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import warnings
from typing import Any, Dict, List, Tuple

PTR = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}
# One instruction's mnemonic in cuobjdump's listing, after an optional predicate (@P0, @!UP1).
OPCODE = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")


def load_module(path: str | None) -> Any:
    if path is None:
        from discograd.kernels import triton_gs

        return triton_gs
    spec = importlib.util.spec_from_file_location("triton_gs_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["triton_gs_other"] = module
    spec.loader.exec_module(module)
    return module


def opcodes(
    kernel: Any, signature: Dict[str, str], constexprs: Dict[str, Any], warps: int, arch: int
) -> List[str]:
    """The kernel's SASS mnemonics, compiled as Triton's launcher specializes a call whose
    pointers are 16-byte aligned (torch's allocations) and whose integers are multiples of 16
    ("tt.divisibility"; without it no load could be vectorized)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    aligned = [
        (i,)
        for i, kind in enumerate(signature.values())
        if kind.startswith("*") or kind in ("i32", "i64")
    ]
    attrs = {key: [["tt.divisibility", 16]] for key in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps}
    )
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        listing = subprocess.run(
            [tool, "-sass", cubin.name], capture_output=True, text=True, check=True
        )
    return OPCODE.findall(listing.stdout)


def forward_case(gs: Any, dtype: str, cols: int, hard: bool, arch: int) -> Tuple[List[str], float]:
    """Opcodes of the forward kernel for rows of ``cols`` (a multiple of 64), and the elements
    one thread handles (the straight-line single pass) or one loop trip covers (tiled)."""
    import torch

    single, chunks, full, warps = gs._forward_plan(cols)
    signature = {
        "x_ptr": PTR[dtype], "y_ptr": PTR[dtype], "z_ptr": "*fp32", "hard_ptr": PTR[dtype],
        "status_ptr": "*i32", "seed_ptr": "*i64", "tau_rows_ptr": "*fp32", "tau": "fp32",
        "K": "i32", "HAS_TAU_ROWS": "constexpr", "HARD": "constexpr", "CHUNKS": "constexpr",
        "SINGLE": "constexpr", "FULL": "constexpr", "FAST": "constexpr",
    }  # fmt: skip
    fast = gs._fast_log(getattr(torch, dtype))
    constexprs = {
        "HAS_TAU_ROWS": False, "HARD": hard, "CHUNKS": chunks, "SINGLE": single,
        "FULL": full, "FAST": fast,
    }  # fmt: skip
    ops = opcodes(gs._forward_kernel, signature, constexprs, warps, arch)
    return ops, 64 * chunks / (32 * warps)


def report(name: str, ops: List[str], per_thread: float) -> str:
    counts = collections.Counter(op.split(".")[0] for op in ops)
    spills = counts["STL"] + counts["LDL"]
    top = ", ".join(f"{op} {n / per_thread:.1f}" for op, n in counts.most_common(8))
    return (
        f"| {name} | {len(ops)} | {len(ops) / per_thread:.1f} | {spills / per_thread:.1f} "
        f"| {counts['SHFL'] / per_thread:.1f} | {top} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default=None, help="a triton_gs.py to count instead")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: sm_90)")
    args = parser.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, stated
    warnings.filterwarnings("ignore")
    gs = load_module(args.module)
    print(f"kernels: {args.module or gs.__file__}; sm_{args.arch}")
    print()
    print("| forward case | SASS instructions | per element | spills (STL+LDL) per element "
          "| SHFL per element | most frequent, per element |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for dtype in ("float32", "bfloat16", "float16"):
        for hard in (False, True):
            ops, per_thread = forward_case(gs, dtype, 32768, hard, args.arch)
            label = f"{dtype}, 32768 columns{', hard' if hard else ''}"
            print(report(label, ops, per_thread), flush=True)


if __name__ == "__main__":
    main()
