"""benchmarks/kernel_split.py: GPU time per kernel of the window and semantic ops."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks import kernel_split as KS  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a GPU")
def test_refuses_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        KS.main(["--cases", "semantic/semask_t-512/s0"])
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_split_of_a_semantic_and_a_window_case(tmp_path):
    """Both directions of both ops get kernel rows with positive times whose sum is the
    direction's total row; Triton's kernels are among them; unknown cases are refused."""
    out = tmp_path / "split.md"
    KS.main(["--cases", "semantic/semask_t-512/s1/win7,window/swin_t-512/s3/sw", "--batch", "2",
             "--reps", "3", "--out", str(out)])
    rows = [r.strip("|").split("|") for r in out.read_text().splitlines() if r.startswith("| ")][1:]
    for case in ("semantic/semask_t-512/s1/win7", "window/swin_t-512/s3/sw"):
        for direction in ("fwd", "bwd"):
            mine = [r for r in rows if r[0].strip() == case and r[1].strip() == direction]
            kernels, total = mine[:-1], mine[-1]
            assert total[2].strip() == "total" and kernels
            times = [float(r[3]) for r in kernels]
            assert all(t > 0 for t in times)
            assert float(total[3]) == pytest.approx(sum(times), abs=0.2)
            assert any("_kernel" in r[2] for r in kernels)
    with pytest.raises(SystemExit):
        KS.main(["--cases", "no/such/case"])


@pytest.mark.gpu
def test_gpu_split_of_the_dkdv_backward(tmp_path, monkeypatch):
    """--dkdv-backward: the window-12 backward runs the dq and dk/dv kernels (no GEMM kernel);
    by default the scratch backward's dq and GEMM kernels."""
    from semask.kernels import semantic_attention as SA

    monkeypatch.setattr(SA, "SCRATCH_BACKWARD", True)
    args = ["--cases", "semantic/semask_b-512/s3/win12", "--batch", "2", "--reps", "2"]
    text = KS.main(args)
    assert "_semantic_bwd_gemm_kernel" in text and "_semantic_bwd_dkdv_kernel" not in text
    text = KS.main(args + ["--dkdv-backward"])
    assert "semantic backward through dk/dv" in text
    assert "_semantic_bwd_dkdv_kernel" in text and "_semantic_bwd_gemm_kernel" not in text
