// Python bindings of the semask CUDA extension (module semask._C when built by setup.py,
// semask_cuda_<arch> when built just in time by semask.ops.build_cuda).
#include <torch/extension.h>

#include "semask_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "semask fused window attention and semantic attention (CUDA)";
  m.def("window_attention_fwd", &semask::window_attention_fwd,
        "qkv [B,Hp,Wp,3C], table [(2w-1)^2,heads] -> (out [B,height,width,C], "
        "lse f32 [B,nW,heads,w*w])",
        py::arg("qkv"), py::arg("table"), py::arg("num_heads"), py::arg("window"),
        py::arg("shift"), py::arg("scale"), py::arg("height"), py::arg("width"));
  m.def("window_attention_bwd", &semask::window_attention_bwd, "-> (dqkv, dtable)",
        py::arg("dout"), py::arg("qkv"), py::arg("table"), py::arg("out"), py::arg("lse"),
        py::arg("num_heads"), py::arg("window"), py::arg("shift"), py::arg("scale"));
  m.def("semantic_attention_fwd", &semask::semantic_attention_fwd,
        "q, k [B,Hp,Wp,K], v [B,Hp,Wp,C] -> (out [B,Hp,Wp,C], lse f32 [B,nW,N]); window 0 = global",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("window"));
  m.def("semantic_attention_bwd", &semask::semantic_attention_bwd, "-> (dq, dk, dv)",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("window"));
  m.def("window_attention_shared_memory", &semask::window_attention_shared_memory,
        "dynamic shared memory per block (bytes) of the largest window attention kernel",
        py::arg("window"), py::arg("head_dim"));
  m.def("semantic_attention_shared_memory", &semask::semantic_attention_shared_memory,
        "dynamic shared memory per block (bytes) of the largest semantic attention kernel",
        py::arg("classes"));
}
