// Fused SeMask semantic attention: out = softmax(Q K^T) V, single head, no scaling.
//
// Computes exactly semask.ops.reference.semantic_attention_reference:
//   q, k [B, Hp, Wp, K], v [B, Hp, Wp, C] -> out [B, Hp, Wp, C], lse float32 [B, nW, N]
// window > 0: non-overlapping w x w windows (N = w*w, no shift, mask or bias);
// window = 0: global over the whole map (nW = 1, N = Hp*Wp, thousands of tokens).
// Windows and tokens are address arithmetic on the natural layout (no partition copies).
//
// Tiles of 32 query rows x 32 keys; 8 warps, each owning 4 rows (or 4 keys in the key-side
// kernels); lanes run over the other side of the tile, so a score is one lane's dot
// product over K with the row operand broadcast from shared memory and the lane operand
// read with float4 loads at a 4 x odd row stride (conflict-free; pad columns are zero).
// V and dO are read in chunks of 128 channels.
//   forward  grid (B*nW, query tiles, C chunks): online softmax over key tiles (warp
//            shuffles for row max and sum); lse written by the first C chunk.
//   backward (P recomputed from lse, flash-attention style; Delta = rowsum(dO * O)):
//            delta: one warp per row; dq: grid (B*nW, query tiles), dP over all C chunks,
//            dS = P (dP - Delta), dQ = dS K; dk: grid (B*nW, key tiles), dK = dS^T Q;
//            dv: grid (B*nW, key tiles, C chunks), dV = P^T dO.
// No atomics: every output row belongs to exactly one block. Limit: K <= 256.
#include "common.cuh"
#ifndef SEMASK_CPU_EMULATION
#include "semask_ops.h"
#endif

#include <algorithm>
#include <climits>

namespace semask {
namespace {

constexpr int kRows = 4;                   // rows (or keys) per warp
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarp;
constexpr int kTile = kWarps * kRows;      // 32 query rows or keys per tile
constexpr int kChunk = 128;                // channels of V / dO per pass
constexpr int kChunkLd = kChunk + 4;       // 4 x odd stride for lane-indexed rows
constexpr int kCSlots = kChunk / kWarp;    // channels per lane
constexpr int kMaxK = 256;
constexpr int kKSlots = kMaxK / kWarp;     // q/k channels per lane
static_assert(kTile == kWarp, "one key (or query) per lane");

struct SemGeom {
  int Hp, Wp, K, C, w, nWx, nW, N, ldk, K4;  // w = 0: global; q/k tile stride, float4 chunks
};

// Geometry of a (checked) call: map Hp x Wp, K classes, C channels, window (0: global).
SemGeom semantic_geom(int Hp, int Wp, int K, int C, int window) {
  SemGeom g;
  g.Hp = Hp;
  g.Wp = Wp;
  g.K = K;
  g.C = C;
  g.w = window;
  g.nWx = window ? Wp / window : 1;
  g.nW = window ? (Hp / window) * g.nWx : 1;
  g.N = window ? window * window : Hp * Wp;
  g.ldk = vec_stride(K);
  g.K4 = (K + 3) / 4;
  return g;
}

// Pixel index b*Hp*Wp + y*Wp + x of token t of window `win`.
__device__ __forceinline__ int64_t token_pix(const SemGeom& g, int b, int win, int t) {
  const int64_t base = static_cast<int64_t>(b) * g.Hp * g.Wp;
  if (g.w == 0) return base + t;
  const int y = (win / g.nWx) * g.w + t / g.w, x = (win % g.nWx) * g.w + t % g.w;
  return base + static_cast<int64_t>(y) * g.Wp + x;
}

// dst[r*ld + c] = src[token t0+r, column col0+c] (float32) for r < kTile, c < ncols;
// zero past the last token or column. No barrier.
template <typename T>
__device__ __forceinline__ void load_tile(float* dst, int ld, const T* src, int width, int col0,
                                          int ncols, const SemGeom& g, int b, int win, int t0) {
  for (int e = threadIdx.x; e < kTile * ncols; e += blockDim.x) {
    const int r = e / ncols, c = e - r * ncols, t = t0 + r, col = col0 + c;
    float val = 0.f;
    if (t < g.N && col < width) val = static_cast<float>(src[token_pix(g, b, win, t) * width + col]);
    dst[r * ld + c] = val;
  }
}

// s[r] += dot(rows[(r0 + r) * ld ..], lane_row[..]) over n4 float4 chunks, for the warp's
// kRows rows (row operand broadcast, lane operand per lane). Each chunk's four products are
// summed first and the chunk sum added to s[r]: the running sum takes n4 roundings instead
// of 4 n4 (one chain of 256 fmas missed the fp32 accuracy rule at K = 256, logits ~ +-60).
__device__ __forceinline__ void tile_dots(float (&s)[kRows], const float* rows, int ld, int r0,
                                          const float* lane_row, int n4) {
  const float4* x4 = reinterpret_cast<const float4*>(lane_row);
  for (int c = 0; c < n4; ++c) {
    const float4 x = x4[c];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float4 y = reinterpret_cast<const float4*>(rows + (r0 + r) * ld)[c];
      s[r] += fmaf(y.w, x.w, fmaf(y.z, x.z, fmaf(y.y, x.y, y.x * x.x)));
    }
  }
}

// acc[r][t] += sum_{n < count} shfl(coef[r], n) * tile[n * ld + lane + 32 t] (columns < width).
template <int Slots>
__device__ __forceinline__ void accumulate_rows(float (&acc)[kRows][Slots], const float (&coef)[kRows],
                                                const float* tile, int ld, int count, int width) {
  const int lane = threadIdx.x % kWarp;
  for (int n = 0; n < count; ++n) {
    float cn[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) cn[r] = __shfl_sync(kFullMask, coef[r], n);
#pragma unroll
    for (int t = 0; t < Slots; ++t) {
      const int col = lane + t * kWarp;
      if (col < width) {
        const float x = tile[n * ld + col];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r][t] = fmaf(cn[r], x, acc[r][t]);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sem_fwd_kernel(const T* __restrict__ q,
                                                           const T* __restrict__ k,
                                                           const T* __restrict__ v,
                                                           T* __restrict__ out,
                                                           float* __restrict__ lse, SemGeom g) {
  SEMASK_SHARED_MEMORY(smem);
  const int b = blockIdx.x / g.nW, win = blockIdx.x % g.nW;
  const int i0 = blockIdx.y * kTile, c0 = blockIdx.z * kChunk;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, r0 = warp * kRows;
  float* Qs = smem;                // [kTile][ldk]   rows broadcast
  float* Ks = Qs + kTile * g.ldk;  // [kTile][ldk]   lane = key
  float* Vs = Ks + kTile * g.ldk;  // [kTile][kChunk]
  const int width = min(kChunk, g.C - c0);

  load_tile(Qs, g.ldk, q, g.K, 0, 4 * g.K4, g, b, win, i0);
  float m[kRows], l[kRows], acc[kRows][kCSlots];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int t = 0; t < kCSlots; ++t) acc[r][t] = 0.f;
  }
  for (int j0 = 0; j0 < g.N; j0 += kTile) {
    __syncthreads();  // previous tiles consumed
    load_tile(Ks, g.ldk, k, g.K, 0, 4 * g.K4, g, b, win, j0);
    load_tile(Vs, kChunk, v, g.C, c0, kChunk, g, b, win, j0);
    __syncthreads();
    float s[kRows] = {};
    tile_dots(s, Qs, g.ldk, r0, Ks + lane * g.ldk, g.K4);
    const bool valid = j0 + lane < g.N;  // lane 0 always valid: the new max is finite
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float sr = valid ? s[r] : -INFINITY;
      const float mnew = fmaxf(m[r], warp_max(sr));
      const float alpha = expf(m[r] - mnew);
      s[r] = expf(sr - mnew);
      l[r] = l[r] * alpha + warp_sum(s[r]);
      m[r] = mnew;
#pragma unroll
      for (int t = 0; t < kCSlots; ++t) acc[r][t] *= alpha;
    }
    accumulate_rows(acc, s, Vs, kChunk, min(kTile, g.N - j0), width);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + r0 + r;
    if (i >= g.N) continue;
    const int64_t row = token_pix(g, b, win, i) * g.C + c0;
    const float inv = 1.f / l[r];
#pragma unroll
    for (int t = 0; t < kCSlots; ++t) {
      const int c = lane + t * kWarp;
      if (c < width) out[row + c] = static_cast<T>(acc[r][t] * inv);
    }
    if (blockIdx.z == 0 && lane == 0)
      lse[(static_cast<int64_t>(b) * g.nW + win) * g.N + i] = m[r] + logf(l[r]);
  }
}

// delta[b, win, i] = sum_c dout * out (float32); one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads) sem_delta_kernel(const T* __restrict__ dout,
                                                             const T* __restrict__ out,
                                                             float* __restrict__ delta,
                                                             int64_t rows, SemGeom g) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (row >= rows) return;  // whole warp
  const int lane = threadIdx.x % kWarp;
  const int64_t bw = row / g.N;
  const int64_t base = token_pix(g, bw / g.nW, bw % g.nW, row % g.N) * g.C;
  float acc = 0.f;
  for (int c = lane; c < g.C; c += kWarp)
    acc = fmaf(static_cast<float>(dout[base + c]), static_cast<float>(out[base + c]), acc);
  acc = warp_sum(acc);
  if (lane == 0) delta[row] = acc;
}

// dQ for a tile of query rows: dQ_i = sum_j P_ij (dP_ij - Delta_i) k_j.
template <typename T>
__global__ void __launch_bounds__(kThreads) sem_dq_kernel(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
    const T* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
    T* __restrict__ dq, SemGeom g) {
  SEMASK_SHARED_MEMORY(smem);
  const int b = blockIdx.x / g.nW, win = blockIdx.x % g.nW, i0 = blockIdx.y * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, r0 = warp * kRows;
  float* Qs = smem;                  // [kTile][ldk]      rows broadcast
  float* Ks = Qs + kTile * g.ldk;    // [kTile][ldk]      lane = key
  float* dOs = Ks + kTile * g.ldk;   // [kTile][kChunk]   rows broadcast
  float* Vs = dOs + kTile * kChunk;  // [kTile][kChunkLd] lane = key
  const int64_t stat = (static_cast<int64_t>(b) * g.nW + win) * g.N;

  load_tile(Qs, g.ldk, q, g.K, 0, 4 * g.K4, g, b, win, i0);
  float li[kRows], di[kRows], acc[kRows][kKSlots];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + r0 + r;
    li[r] = i < g.N ? lse[stat + i] : 0.f;
    di[r] = i < g.N ? delta[stat + i] : 0.f;
#pragma unroll
    for (int t = 0; t < kKSlots; ++t) acc[r][t] = 0.f;
  }
  for (int j0 = 0; j0 < g.N; j0 += kTile) {
    __syncthreads();
    load_tile(Ks, g.ldk, k, g.K, 0, 4 * g.K4, g, b, win, j0);
    __syncthreads();
    float p[kRows] = {}, dp[kRows] = {};
    tile_dots(p, Qs, g.ldk, r0, Ks + lane * g.ldk, g.K4);
    const bool valid = j0 + lane < g.N;
#pragma unroll
    for (int r = 0; r < kRows; ++r) p[r] = valid ? expf(p[r] - li[r]) : 0.f;
    for (int c0 = 0; c0 < g.C; c0 += kChunk) {
      __syncthreads();
      load_tile(dOs, kChunk, dout, g.C, c0, kChunk, g, b, win, i0);
      load_tile(Vs, kChunkLd, v, g.C, c0, kChunk, g, b, win, j0);
      __syncthreads();
      tile_dots(dp, dOs, kChunk, r0, Vs + lane * kChunkLd, (min(kChunk, g.C - c0) + 3) / 4);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) p[r] *= dp[r] - di[r];  // dS
    accumulate_rows(acc, p, Ks, g.ldk, min(kTile, g.N - j0), g.K);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + r0 + r;
    if (i >= g.N) continue;
    const int64_t row = token_pix(g, b, win, i) * g.K;
#pragma unroll
    for (int t = 0; t < kKSlots; ++t) {
      const int c = lane + t * kWarp;
      if (c < g.K) dq[row + c] = static_cast<T>(acc[r][t]);
    }
  }
}

// dK for a tile of keys: dK_j = sum_i P_ij (dP_ij - Delta_i) q_i.
template <typename T>
__global__ void __launch_bounds__(kThreads) sem_dk_kernel(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
    const T* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
    T* __restrict__ dk, SemGeom g) {
  SEMASK_SHARED_MEMORY(smem);
  const int b = blockIdx.x / g.nW, win = blockIdx.x % g.nW, j0 = blockIdx.y * kTile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, r0 = warp * kRows;
  float* Ks = smem;                   // [kTile][ldk]      keys broadcast
  float* Qs = Ks + kTile * g.ldk;     // [kTile][ldk]      lane = query
  float* Vs = Qs + kTile * g.ldk;     // [kTile][kChunk]   keys broadcast
  float* dOs = Vs + kTile * kChunk;   // [kTile][kChunkLd] lane = query
  float* Ls = dOs + kTile * kChunkLd; // [kTile] lse of the query tile
  float* Ds = Ls + kTile;             // [kTile] Delta of the query tile
  const int64_t stat = (static_cast<int64_t>(b) * g.nW + win) * g.N;

  load_tile(Ks, g.ldk, k, g.K, 0, 4 * g.K4, g, b, win, j0);
  float acc[kRows][kKSlots];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kKSlots; ++t) acc[r][t] = 0.f;
  for (int i0 = 0; i0 < g.N; i0 += kTile) {
    __syncthreads();
    load_tile(Qs, g.ldk, q, g.K, 0, 4 * g.K4, g, b, win, i0);
    if (threadIdx.x < kTile) {
      const int i = i0 + threadIdx.x;
      Ls[threadIdx.x] = i < g.N ? lse[stat + i] : 0.f;
      Ds[threadIdx.x] = i < g.N ? delta[stat + i] : 0.f;
    }
    __syncthreads();
    float p[kRows] = {}, dp[kRows] = {};
    tile_dots(p, Ks, g.ldk, r0, Qs + lane * g.ldk, g.K4);
    const bool valid = i0 + lane < g.N;
#pragma unroll
    for (int r = 0; r < kRows; ++r) p[r] = valid ? expf(p[r] - Ls[lane]) : 0.f;
    for (int c0 = 0; c0 < g.C; c0 += kChunk) {
      __syncthreads();
      load_tile(Vs, kChunk, v, g.C, c0, kChunk, g, b, win, j0);
      load_tile(dOs, kChunkLd, dout, g.C, c0, kChunk, g, b, win, i0);
      __syncthreads();
      tile_dots(dp, Vs, kChunk, r0, dOs + lane * kChunkLd, (min(kChunk, g.C - c0) + 3) / 4);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) p[r] *= dp[r] - Ds[lane];  // dS (column of the key)
    accumulate_rows(acc, p, Qs, g.ldk, min(kTile, g.N - i0), g.K);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int j = j0 + r0 + r;
    if (j >= g.N) continue;
    const int64_t row = token_pix(g, b, win, j) * g.K;
#pragma unroll
    for (int t = 0; t < kKSlots; ++t) {
      const int c = lane + t * kWarp;
      if (c < g.K) dk[row + c] = static_cast<T>(acc[r][t]);
    }
  }
}

// dV for a tile of keys and a chunk of channels: dV_j = sum_i P_ij dO_i.
template <typename T>
__global__ void __launch_bounds__(kThreads) sem_dv_kernel(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
    const float* __restrict__ lse, T* __restrict__ dv, SemGeom g) {
  SEMASK_SHARED_MEMORY(smem);
  const int b = blockIdx.x / g.nW, win = blockIdx.x % g.nW;
  const int j0 = blockIdx.y * kTile, c0 = blockIdx.z * kChunk;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, r0 = warp * kRows;
  float* Ks = smem;                   // [kTile][ldk]    keys broadcast
  float* Qs = Ks + kTile * g.ldk;     // [kTile][ldk]    lane = query
  float* dOs = Qs + kTile * g.ldk;    // [kTile][kChunk] lane = channel
  float* Ls = dOs + kTile * kChunk;   // [kTile]
  const int64_t stat = (static_cast<int64_t>(b) * g.nW + win) * g.N;
  const int width = min(kChunk, g.C - c0);

  load_tile(Ks, g.ldk, k, g.K, 0, 4 * g.K4, g, b, win, j0);
  float acc[kRows][kCSlots];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kCSlots; ++t) acc[r][t] = 0.f;
  for (int i0 = 0; i0 < g.N; i0 += kTile) {
    __syncthreads();
    load_tile(Qs, g.ldk, q, g.K, 0, 4 * g.K4, g, b, win, i0);
    load_tile(dOs, kChunk, dout, g.C, c0, kChunk, g, b, win, i0);
    if (threadIdx.x < kTile) {
      const int i = i0 + threadIdx.x;
      Ls[threadIdx.x] = i < g.N ? lse[stat + i] : 0.f;
    }
    __syncthreads();
    float p[kRows] = {};
    tile_dots(p, Ks, g.ldk, r0, Qs + lane * g.ldk, g.K4);
    const bool valid = i0 + lane < g.N;
#pragma unroll
    for (int r = 0; r < kRows; ++r) p[r] = valid ? expf(p[r] - Ls[lane]) : 0.f;
    accumulate_rows(acc, p, dOs, kChunk, min(kTile, g.N - i0), width);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int j = j0 + r0 + r;
    if (j >= g.N) continue;
    const int64_t row = token_pix(g, b, win, j) * g.C + c0;
#pragma unroll
    for (int t = 0; t < kCSlots; ++t) {
      const int c = lane + t * kWarp;
      if (c < width) dv[row + c] = static_cast<T>(acc[r][t]);
    }
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Dynamic shared memory of each kernel (the tiles listed at the top of each kernel).
size_t fwd_smem_bytes(const SemGeom& g) { return sizeof(float) * kTile * (2 * g.ldk + kChunk); }
size_t dq_smem_bytes(const SemGeom& g) {
  return sizeof(float) * kTile * (2 * g.ldk + kChunk + kChunkLd);
}
size_t dk_smem_bytes(const SemGeom& g) {
  return sizeof(float) * kTile * (2 * g.ldk + kChunk + kChunkLd + 2);
}
size_t dv_smem_bytes(const SemGeom& g) { return sizeof(float) * kTile * (2 * g.ldk + kChunk + 1); }

}  // namespace

#ifndef SEMASK_CPU_EMULATION
namespace {

void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_cuda(op, "q", q);
  check_cuda(op, "k", k);
  check_cuda(op, "v", v);
  check_same_device(op, "k", k, q, "q");
  check_same_device(op, "v", v, q, "q");
  check_float_dtype(op, "q", q);
  check_dtype(op, "k", k, q.scalar_type());
  check_dtype(op, "v", v, q.scalar_type());
  check_contiguous(op, "q", q);
  check_contiguous(op, "k", k);
  check_contiguous(op, "v", v);
}

SemGeom make_geom(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               int64_t window) {
  TORCH_CHECK(q.dim() == 4, op, ": q must be [B, Hp, Wp, K], got ", shape_str(q.sizes()));
  check_shape(op, "k", k, {q.size(0), q.size(1), q.size(2), q.size(3)});
  TORCH_CHECK(v.dim() == 4 && v.sizes().slice(0, 3).equals(q.sizes().slice(0, 3)), op,
              ": v must be [B, Hp, Wp, C] with q's B, Hp, Wp, got ", shape_str(v.sizes()),
              " and q ", shape_str(q.sizes()));
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= kMaxK, op, ": K=", num(q.size(3)), " (q's last dim) ",
              "must lie in [1, ", num(kMaxK), "]");
  TORCH_CHECK(v.size(3) >= 1, op, ": v has no channels");
  TORCH_CHECK(window >= 0, op, ": window=", num(window), " must be >= 0 (0 = global)");
  TORCH_CHECK(window == 0 || (q.size(1) % window == 0 && q.size(2) % window == 0), op,
              ": map ", num(q.size(1)), "x", num(q.size(2)), " is not a multiple of window ",
              num(window));
  TORCH_CHECK(q.size(0) * q.size(1) * q.size(2) < INT_MAX, op, ": too many pixels");
  const SemGeom g = semantic_geom(q.size(1), q.size(2), q.size(3), v.size(3), window);
  const int64_t tiles = (g.N + kTile - 1) / kTile;
  TORCH_CHECK(tiles <= 65535, op, ": ", num(g.N), " tokens per window are too many");
  return g;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> semantic_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, int64_t window) {
  const char* op = "semask semantic_attention_fwd";
  check_qkv(op, q, k, v);
  const SemGeom g = make_geom(op, q, k, v, window);
  const int64_t B = q.size(0);
  auto out = at::empty_like(v);
  auto lse = at::empty({B, g.nW, g.N}, q.options().dtype(at::kFloat));
  if (B == 0 || g.nW == 0 || g.N == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(q.device());
  const size_t smem = fwd_smem_bytes(g);
  const dim3 grid(B * g.nW, cdiv(g.N, kTile), cdiv(g.C, kChunk));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SEMASK_DISPATCH(q.scalar_type(), "semask_semantic_attention_fwd", [&] {
    auto kernel = sem_fwd_kernel<scalar_t>;
    allow_shared_memory(op, kernel, smem);
    kernel<<<grid, kThreads, smem, stream>>>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                                             v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                             lse.data_ptr<float>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_attention_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, int64_t window) {
  const char* op = "semask semantic_attention_bwd";
  check_cuda(op, "dout", dout);
  check_qkv(op, q, k, v);
  check_cuda(op, "out", out);
  check_cuda(op, "lse", lse);
  check_same_device(op, "dout", dout, q, "q");
  check_same_device(op, "out", out, q, "q");
  check_same_device(op, "lse", lse, q, "q");
  check_dtype(op, "dout", dout, q.scalar_type());
  check_dtype(op, "out", out, q.scalar_type());
  check_dtype(op, "lse", lse, at::kFloat);
  check_contiguous(op, "dout", dout);
  check_contiguous(op, "out", out);
  check_contiguous(op, "lse", lse);
  const SemGeom g = make_geom(op, q, k, v, window);
  const int64_t B = q.size(0);
  check_shape(op, "dout", dout, {B, g.Hp, g.Wp, g.C});
  check_shape(op, "out", out, {B, g.Hp, g.Wp, g.C});
  check_shape(op, "lse", lse, {B, g.nW, g.N});
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  if (B == 0 || g.nW == 0 || g.N == 0) return {dq, dk, dv};
  const c10::cuda::CUDAGuard guard(q.device());
  auto delta = at::empty({B, g.nW, g.N}, lse.options());
  const int64_t rows = B * g.nW * g.N;
  const int64_t bw = B * g.nW, tiles = cdiv(g.N, kTile), chunks = cdiv(g.C, kChunk);
  const size_t smem_dq = dq_smem_bytes(g), smem_dk = dk_smem_bytes(g), smem_dv = dv_smem_bytes(g);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SEMASK_DISPATCH(q.scalar_type(), "semask_semantic_attention_bwd", [&] {
    using T = scalar_t;
    sem_delta_kernel<T><<<cdiv(rows, kWarps), kThreads, 0, stream>>>(
        dout.data_ptr<T>(), out.data_ptr<T>(), delta.data_ptr<float>(), rows, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto dq_kernel = sem_dq_kernel<T>;
    allow_shared_memory(op, dq_kernel, smem_dq);
    dq_kernel<<<dim3(bw, tiles), kThreads, smem_dq, stream>>>(
        dout.data_ptr<T>(), q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(),
        lse.data_ptr<float>(), delta.data_ptr<float>(), dq.data_ptr<T>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto dk_kernel = sem_dk_kernel<T>;
    allow_shared_memory(op, dk_kernel, smem_dk);
    dk_kernel<<<dim3(bw, tiles), kThreads, smem_dk, stream>>>(
        dout.data_ptr<T>(), q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(),
        lse.data_ptr<float>(), delta.data_ptr<float>(), dk.data_ptr<T>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto dv_kernel = sem_dv_kernel<T>;
    allow_shared_memory(op, dv_kernel, smem_dv);
    dv_kernel<<<dim3(bw, tiles, chunks), kThreads, smem_dv, stream>>>(
        dout.data_ptr<T>(), q.data_ptr<T>(), k.data_ptr<T>(), lse.data_ptr<float>(),
        dv.data_ptr<T>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk, dv};
}

int64_t semantic_attention_shared_memory(int64_t classes) {
  const SemGeom g = semantic_geom(1, 1, classes, 1, 0);
  return static_cast<int64_t>(
      std::max({fwd_smem_bytes(g), dq_smem_bytes(g), dk_smem_bytes(g), dv_smem_bytes(g)}));
}

#endif  // SEMASK_CPU_EMULATION

}  // namespace semask
