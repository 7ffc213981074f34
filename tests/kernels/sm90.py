"""Compile Triton kernels for an H100 (sm_90) on a machine without a GPU."""
import os
import subprocess
import sys


def compile_sm90(fn, pointers, constexprs, num_warps, floats=(), num_stages=None,
                 divisible=()):
    """Compile ``fn`` for sm_90: ``pointers`` {name: "*bf16", ...} (16-aligned), ``floats``
    the names of fp32 scalars; other arguments are i32 or, in ``constexprs``, constants;
    ``num_stages`` as launched (None: Triton's default); ``divisible``: i32 arguments that
    are multiples of 16, as Triton's launcher specializes them (N = 144, C = 128, say),
    which decides whether loads vectorize and pipeline."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    sig = {n: "constexpr" if n in constexprs
           else pointers.get(n, "fp32" if n in floats else "i32") for n in names}
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(names.index(n),): v for n, v in constexprs.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]]
                           for n in (*pointers, *divisible)})
    options = dict(num_warps=num_warps)
    if num_stages is not None:
        options.update(num_stages=num_stages)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    assert ".entry" in kernel.asm["ptx"]
    return kernel


def run_without_interpreter(test_file: str, call: str) -> None:
    """Run ``call`` of the test module ``test_file`` in a fresh process without
    TRITON_INTERPRET (which replaces the jit functions in this one); assert it succeeds."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    folder = os.path.dirname(os.path.abspath(test_file))
    module = os.path.splitext(os.path.basename(test_file))[0]
    code = f"import sys; sys.path.insert(0, {folder!r}); import {module} as t; t.{call}"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def _ptxas() -> str:
    """The ptxas on PATH, else the one Triton ships (triton/backends/nvidia/bin)."""
    import shutil

    import triton.backends.nvidia as nvidia

    found = shutil.which("ptxas") or os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    assert os.path.isfile(found), "no ptxas to check register spills with"
    return found


def spill_bytes(kernel) -> int:
    """Bytes of register spill stores of ``kernel``'s PTX built by ptxas for sm_90a."""
    import re
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        run = subprocess.run([_ptxas(), "-arch=sm_90a", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return int(re.search(r"(\d+) bytes spill stores", run.stderr).group(1))


def no_spills(kernel) -> bool:
    """Whether ptxas built ``kernel`` without register spills (see :func:`spill_bytes`)."""
    return spill_bytes(kernel) == 0


def replicated_mma_tiles(kernel) -> list[tuple[int, int, int]]:
    """(rows, cols, copies) of every 2D tensor in an MMA layout (TTGIR) of ``kernel`` that
    several warps hold in identical copies: the layout's warps x instruction tile is larger
    than the tensor, so those warps repeat the same MMA and element-wise work. Triton does
    this on sm_90 for a chained dot (q k^T feeding P v) with BLOCK_M < 16 * num_warps: it
    puts every warp along M."""
    import re

    ttgir = kernel.asm["ttgir"]
    layouts = {}
    for m in re.finditer(r"(#mma\d*) = #(?:ttg|triton_gpu)\.nvidia_mma<\{versionMajor = \d+, "
                         r"[^}]*warpsPerCTA = \[(\d+), (\d+)\][^}]*instrShape = \[(\d+), (\d+)",
                         ttgir):
        layouts[m.group(1)] = tuple(int(g) for g in m.groups()[1:])
    ptx = kernel.asm["ptx"]
    assert layouts or not ("mma.sync" in ptx or "wgmma" in ptx), "no MMA layout found in TTGIR"
    found = set()
    for m in re.finditer(r"tensor<(\d+)x(\d+)x[a-z]\w*, (#mma\d*)>", ttgir):  # 2D only
        rows, cols = int(m.group(1)), int(m.group(2))
        warps_m, warps_n, instr_m, instr_n = layouts[m.group(3)]
        copies = max(1, warps_m * instr_m // rows) * max(1, warps_n * instr_n // cols)
        if rows > 1 and cols > 1 and copies > 1:
            found.add((rows, cols, copies))
    return sorted(found)
