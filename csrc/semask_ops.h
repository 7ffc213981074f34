// Host entry points of the semask CUDA extension (defined in the .cu files, bound in
// bindings.cpp). Layouts and semantics: semask/ops/reference.py.
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace semask {

// qkv [B, Hp, Wp, 3C], table [(2w-1)^2, heads] -> out [B, height, width, C] (the first
// height x width tokens of the map), lse float32 [B, nW, heads, w*w]
std::tuple<at::Tensor, at::Tensor> window_attention_fwd(
    const at::Tensor& qkv, const at::Tensor& table, int64_t num_heads, int64_t window,
    int64_t shift, double scale, int64_t height, int64_t width);

// dout: out's shape -> dqkv [B, Hp, Wp, 3C] (qkv's dtype), dtable [(2w-1)^2, heads] (table's dtype)
std::tuple<at::Tensor, at::Tensor> window_attention_bwd(
    const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& table, const at::Tensor& out,
    const at::Tensor& lse, int64_t num_heads, int64_t window, int64_t shift, double scale);

// q, k [B, Hp, Wp, K], v [B, Hp, Wp, C] -> out [B, Hp, Wp, C], lse float32 [B, nW, N]
std::tuple<at::Tensor, at::Tensor> semantic_attention_fwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window);

// -> dq, dk [B, Hp, Wp, K], dv [B, Hp, Wp, C]
std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_attention_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, int64_t window);

// Dynamic shared memory per block (bytes) the largest of each op's kernels needs, forward
// and backward: window attention for a window and head dim, semantic attention for K classes
int64_t window_attention_shared_memory(int64_t window, int64_t head_dim);
int64_t semantic_attention_shared_memory(int64_t classes);

}  // namespace semask
