"""Helpers shared by the kernels: fp32-accumulating dots, head + tail tiles, blocks of
whole rows, the bilinear weights, the launch device and the determinism alert."""
import contextlib
import warnings

import torch
import triton
import triton.language as tl


def alert_not_deterministic(what: str) -> None:
    """As PyTorch's own ops that sum with atomics: under
    ``torch.use_deterministic_algorithms(True)`` raise that ``what`` (its float atomic sums
    change their last bits from run to run), or warn with ``warn_only=True``."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (f"{what} sums with float atomics, so its last bits vary from run to run, but "
               "torch.use_deterministic_algorithms(True) is set (fused=False runs the reference)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of host ints. The launchers use this and :func:`next_pow2` rather than
    triton.cdiv / triton.next_power_of_2, which are constexpr functions in recent Triton
    (about 2 us per call from host code, 0.2 us here; measured with Triton 3.8)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n, for host ints n >= 1."""
    return 1 << max(0, n - 1).bit_length()


def head_tail(n: int) -> tuple[int, int, bool]:
    """Tiles covering n columns: a head of a power of two >= 16 and, where that pads less
    than one power-of-two tile, a tail (also a power of two >= 16): 150 -> 128 + 32 instead
    of 256, 144 -> 128 + 16; 19 -> 32, no tail. Returns (head, tail, has_tail); tail is 16
    when unused."""
    full = max(16, next_pow2(n))
    head = max(16, full // 2)
    tail = max(16, next_pow2(n - head)) if n > head else 16
    if n <= head or head + tail >= full:
        return full, 16, False
    return head, tail, True


def _last_tile(n: int, block: int) -> int:
    """The smallest power of two >= 16 holding what the cdiv(n, block) blocks of ``block``
    leave for the last one (``block`` when they leave a full block)."""
    left = n % block
    return max(16, next_pow2(left)) if left else block


def row_tail(n: int, block_m: int) -> dict:
    """The last of the cdiv(n, block_m) row blocks as a smaller tile where its rows fit one
    (ROW_TAIL, BLOCK_M2 = power of two >= the rows left, at least 16): 144 = 64 + 64 + 16."""
    small = _last_tile(n, block_m)
    return dict(BLOCK_M2=small, ROW_TAIL=small < block_m)


def step_tail(n: int, step: int) -> dict:
    """The same for the steps of a loop over n tokens: full steps of ``step`` and, where the
    rest fits a smaller tile, a last step of BLOCK_STEP2 (STEP_TAIL): 144 = 128 + 16."""
    small = _last_tile(n, step)
    return dict(BLOCK_STEP2=small, STEP_TAIL=small < step)


# Triton 3.2 (torch 2.6) aborts building several chained-dot kernels for sm_90 on more
# warps than a 64-row tile spans (assertion in LinearLayout::reshapeOuts); 3.3 and later
# build them.
OLD_TRITON = tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 3)


def warps(n: int) -> int:
    """``n`` warps, at most 4 on Triton < 3.3 (see OLD_TRITON)."""
    return min(n, 4) if OLD_TRITON else n


def old_triton_on_hopper(t: torch.Tensor) -> bool:
    """Whether ``t`` (a tensor or the backend's TensorInfo) lives on an sm_90+ GPU under
    Triton < 3.3, which fails to build the fp32 fused loss and the fp32 online semantic
    dk/dv kernels there ("Failed to emit transfer from register to shared", "PassManager::run
    failed"), whatever the tiles."""
    return (OLD_TRITON and t.device.type == "cuda"
            and torch.cuda.get_device_capability(t.device)[0] >= 9)


def on_device(t: torch.Tensor):
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


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


@triton.jit
def row_block(pid, M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Block ``pid`` of BLOCK_M whole rows of a row-major [M, C] tensor: its rows (int64)
    and columns, their mask and the [BLOCK_M, BLOCK_C] element offsets."""
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows < M)[:, None] & (cols < C)[None, :]
    return rows, cols, mask, rows[:, None] * C + cols[None, :]


@triton.jit
def bilinear_source(o, scale):
    """Source coordinate of output coordinate(s) o of a bilinear resize with
    ``scale`` = input size / output size (PyTorch's align_corners=False rule)."""
    return tl.maximum(scale * (o.to(tl.float32) + 0.5) - 0.5, 0.0)


@triton.jit
def bilinear_axis(o, n_in, scale, base):
    """Per output coordinate o: the indices (relative to ``base``) and weights of its two
    source pixels along one axis of ``n_in`` pixels, as PyTorch's ``upsample_bilinear2d``:
    i0 = floor(src), i1 = min(i0 + 1, n_in - 1), weights (1 - (src - i0), src - i0)."""
    src = bilinear_source(o, scale)
    i0 = src.to(tl.int32)  # floor: src >= 0
    i1 = tl.where(i0 < n_in - 1, i0 + 1, i0)
    lam1 = src - i0.to(tl.float32)
    return i0 - base, i1 - base, 1.0 - lam1, lam1
