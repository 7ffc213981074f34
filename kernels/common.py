"""Triton helpers shared by the window and semantic attention kernels."""
import triton
import triton.language as tl


@triton.jit
def dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in fp32 with ``input_precision=PREC`` ("ieee" keeps fp32 exact).
    UPCAST: the (already rounded) bf16 operands go through fp32 first (exact products),
    because Triton's CPU interpreter multiplies the raw bits of bf16 operands."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        acc = tl.dot(a, b, input_precision=PREC)
    return acc
