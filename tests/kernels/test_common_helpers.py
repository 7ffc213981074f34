"""Host-side helpers of the kernels' launchers (kernels/common.py)."""
import math

from semask.kernels.common import cdiv, next_pow2


def test_cdiv_and_next_pow2_match_their_definitions():
    """cdiv = ceil(a / b); next_pow2 = the smallest power of two >= n, checked against
    math (not against triton's versions, which these replace on the host)."""
    for a in range(0, 300):
        for b in (1, 2, 3, 7, 16, 49, 64, 144):
            assert cdiv(a, b) == math.ceil(a / b)
    for n in range(1, 5000):
        p = next_pow2(n)
        assert p >= n and p & (p - 1) == 0 and (p == 1 or p // 2 < n)
