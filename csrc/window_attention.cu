// Fused shifted-window attention with relative position bias (Swin W-MSA / SW-MSA).
//
// Computes exactly semask.ops.reference.window_attention_reference:
//   qkv   [B, Hp, Wp, 3C] of the zero-padded map, channel = which*C + head*D + d
//   table [(2w-1)^2, heads] (read as float32; any of float32/float16/bfloat16)
//   out   [B, H, W, C] (unshifted positions) of the unpadded map (H <= Hp, W <= Wp: padded
//         tokens are keys but their rows are neither stored nor read from dout),
//   lse   float32 [B, nW, heads, N], N = w*w
// The cyclic shift by -shift, the window partition, the shift mask (-100 between the 9
// regions of the shifted map) and the reverse shift are all address arithmetic: token t
// of window `win` of the shifted map reads and writes pixel ((ys+shift) % Hp, (xs+shift) % Wp).
//
// Grid: one block per (window, head, batch); the whole window (49 or 144 tokens) sits in
// shared memory as float32 tiles [N][ld], ld = 4 x odd >= D, columns D.. zero: dot products
// use conflict-free float4 loads whether the row is per lane or broadcast.
// Forward: one warp per query row, lanes over keys (<= 5 per lane), warp-shuffle max and
// sum, then lanes over head channels for P V.
// Backward (recomputes P from lse, flash-attention style): pass 1, one warp per query row:
// P, dP = dO V^T, Delta_i = sum_j P_ij dP_ij (= rowsum(dO * O) of the exact output, computed
// in fp32 from P and dP instead of the rounded out tensor), dS = P (dP - Delta), dQ.
// Pass 2, one warp per key column: dK = scale dS^T Q, dV = P^T dO, and the bias gradient
// summed in a shared [(2w-1)^2] buffer with shared atomics, then one global atomicAdd per
// table entry per block into a float32 buffer.
// Limits: window <= 12, head dim <= 64. Shared memory (backward, w=12): 97 KiB for D=32; 169
// KiB for D=64, more than sm_80 allows (163 KiB): that case needs sm_90 (clear error otherwise).
#include "common.cuh"
#ifndef SEMASK_CPU_EMULATION
#include "semask_ops.h"
#endif

#include <algorithm>
#include <climits>

namespace semask {
namespace {

constexpr int kMaxWindow = 12;
constexpr int kKeySlots = (kMaxWindow * kMaxWindow + kWarp - 1) / kWarp;  // keys per lane
constexpr int kMaxHeadDim = 64;
constexpr int kDimSlots = kMaxHeadDim / kWarp;  // head channels per lane
constexpr float kShiftMask = -100.0f;           // official Swin value between regions

struct WinGeom {
  int Hp, Wp, H, W, C, heads, D, w, shift;  // padded map, out map, channels, ...
  int N, nWx, nW, ld, D4, T2;  // tokens per window, windows per row, windows, tile stride,
  float scale;                 // float4 chunks per row, table rows
};

// Geometry of a (checked) call: padded map Hp x Wp, out map H x W, C channels, `heads`,
// window, shift.
WinGeom window_geom(int Hp, int Wp, int H, int W, int C, int heads, int window, int shift,
                    float scale) {
  WinGeom g;
  g.Hp = Hp;
  g.Wp = Wp;
  g.H = H;
  g.W = W;
  g.C = C;
  g.heads = heads;
  g.D = C / heads;
  g.w = window;
  g.shift = shift;
  g.N = window * window;
  g.nWx = Wp / window;
  g.nW = (Hp / window) * g.nWx;
  g.ld = vec_stride(g.D);
  g.D4 = (g.D + 3) / 4;
  g.T2 = (2 * window - 1) * (2 * window - 1);
  g.scale = scale;
  return g;
}

// Pixel (b*Hp + y)*Wp + x of token t of window `win` in the shifted map, its shift region
// and its bias offset ofs = (t / w)(2w-1) + t % w.
__device__ __forceinline__ void token_of(const WinGeom& g, int b, int win, int t, int& pix,
                                         int& label, int& ofs) {
  const int ys = (win / g.nWx) * g.w + t / g.w;
  const int xs = (win % g.nWx) * g.w + t % g.w;
  int y = ys + g.shift, x = xs + g.shift;  // shift < w <= Hp, Wp: one wrap at most
  if (y >= g.Hp) y -= g.Hp;
  if (x >= g.Wp) x -= g.Wp;
  pix = (b * g.Hp + y) * g.Wp + x;
  ofs = (t / g.w) * (2 * g.w - 1) + t % g.w;
  label = 0;
  if (g.shift) {  // 3x3 regions: bands split at n - w and n - shift (shift_region_labels)
    const int by = (ys >= g.Hp - g.w) + (ys >= g.Hp - g.shift);
    const int bx = (xs >= g.Wp - g.w) + (xs >= g.Wp - g.shift);
    label = by * 3 + bx;
  }
}

// Pixel (b*H + y)*W + x of the out map for padded-map pixel `pix`, or -1 outside it.
__device__ __forceinline__ int out_pixel(const WinGeom& g, int pix) {
  const int plane = g.Hp * g.Wp, b = pix / plane, yx = pix - b * plane;
  const int y = yx / g.Wp, x = yx - y * g.Wp;
  return (y < g.H && x < g.W) ? (b * g.H + y) * g.W + x : -1;
}

// Row of the bias table for query i and key j, (dh + w-1)(2w-1) + (dw + w-1) with
// (dh, dw) = coordinates of i minus those of j, is ofs(i) - ofs(j) + center.
__device__ __forceinline__ int bias_center(const WinGeom& g) { return 2 * g.w * (g.w - 1); }

// scale q_i.k_j + bias[idx] + shift mask (-100 between regions)
__device__ __forceinline__ float score(const WinGeom& g, const float* Qs, const float* Ks,
                                       const float* Bs, int i, int j, int idx, bool same_region) {
  const float mask = same_region ? 0.f : kShiftMask;
  return dot4(Qs + i * g.ld, Ks + j * g.ld, g.D4) * g.scale + Bs[idx] + mask;
}

// This lane's tokens lane + 32 t: bias offsets (+ `add`) and region labels, in registers.
__device__ __forceinline__ void lane_tokens(const WinGeom& g, const int* ofs, const int* lab,
                                            int add, int (&o)[kKeySlots], int (&l)[kKeySlots]) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int t = 0; t < kKeySlots; ++t) {
    const int j = lane + t * kWarp;
    o[t] = j < g.N ? ofs[j] + add : 0;
    l[t] = j < g.N ? lab[j] : -1;
  }
}

// Token pixels, labels and offsets, the bias column of head h; returns after a barrier.
__device__ __forceinline__ void setup_window(const WinGeom& g, int b, int win, int h,
                                             const float* table, int* pix, int* lab, int* ofs,
                                             float* Bs) {
  for (int t = threadIdx.x; t < g.N; t += blockDim.x) token_of(g, b, win, t, pix[t], lab[t], ofs[t]);
  for (int e = threadIdx.x; e < g.T2; e += blockDim.x) Bs[e] = table[e * g.heads + h];
  __syncthreads();
}

// Tiles [N][ld] of q, k, v of head h (float32, zero in columns D .. 4*D4); no barrier.
template <typename T>
__device__ __forceinline__ void load_qkv(const WinGeom& g, int h, const T* qkv, const int* pix,
                                         float* Qs, float* Ks, float* Vs) {
  const int64_t C3 = 3 * static_cast<int64_t>(g.C);
  const int Dp = 4 * g.D4;
  for (int e = threadIdx.x; e < g.N * Dp; e += blockDim.x) {
    const int t = e / Dp, d = e - t * Dp;
    float q = 0.f, k = 0.f, v = 0.f;
    if (d < g.D) {
      const T* src = qkv + pix[t] * C3 + h * g.D + d;
      q = static_cast<float>(src[0]);
      k = static_cast<float>(src[g.C]);
      v = static_cast<float>(src[2 * g.C]);
    }
    Qs[t * g.ld + d] = q;
    Ks[t * g.ld + d] = k;
    Vs[t * g.ld + d] = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(256) window_fwd_kernel(const T* __restrict__ qkv,
                                                         const float* __restrict__ table,
                                                         T* __restrict__ out,
                                                         float* __restrict__ lse, WinGeom g) {
  SEMASK_SHARED_MEMORY(smem);
  const int win = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int N = g.N, nwarps = blockDim.x / kWarp, warp = threadIdx.x / kWarp,
            lane = threadIdx.x % kWarp;
  float* Qs = smem;
  float* Ks = Qs + N * g.ld;
  float* Vs = Ks + N * g.ld;
  float* Bs = Vs + N * g.ld;
  float* P = Bs + g.T2 + warp * N;  // this warp's probability row
  int* pix = reinterpret_cast<int*>(Bs + g.T2 + nwarps * N);
  int* lab = pix + N;
  int* ofs = lab + N;

  setup_window(g, b, win, h, table, pix, lab, ofs, Bs);
  load_qkv(g, h, qkv, pix, Qs, Ks, Vs);
  __syncthreads();

  int kofs[kKeySlots], klab[kKeySlots];  // this lane's keys
  lane_tokens(g, ofs, lab, 0, kofs, klab);
  for (int i = warp; i < N; i += nwarps) {
    const int qofs = ofs[i] + bias_center(g), qlab = lab[i];
    float s[kKeySlots];
    float mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < kKeySlots; ++t) {
      const int j = lane + t * kWarp;
      s[t] = j < N ? score(g, Qs, Ks, Bs, i, j, qofs - kofs[t], qlab == klab[t]) : -INFINITY;
      mx = fmaxf(mx, s[t]);
    }
    mx = warp_max(mx);  // finite: key 0 is valid
    float sum = 0.f;
#pragma unroll
    for (int t = 0; t < kKeySlots; ++t) {
      s[t] = expf(s[t] - mx);  // 0 for missing keys
      sum += s[t];
    }
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
#pragma unroll
    for (int t = 0; t < kKeySlots; ++t) {
      const int j = lane + t * kWarp;
      if (j < N) P[j] = s[t] * inv;
    }
    __syncwarp();
    const int opix = out_pixel(g, pix[i]);
    const int64_t row = static_cast<int64_t>(opix) * g.C + h * g.D;
#pragma unroll
    for (int c = 0; c < kDimSlots; ++c) {
      const int d = lane + c * kWarp;
      if (d < g.D && opix >= 0) {
        float acc = 0.f;
        for (int j = 0; j < N; ++j) acc = fmaf(P[j], Vs[j * g.ld + d], acc);
        out[row + d] = static_cast<T>(acc);
      }
    }
    if (lane == 0) lse[((static_cast<int64_t>(b) * g.nW + win) * g.heads + h) * N + i] = mx + logf(sum);
    __syncwarp();  // P is rewritten by the next row
  }
}

template <typename T>
__global__ void __launch_bounds__(256) window_bwd_kernel(
    const T* __restrict__ dout, const T* __restrict__ qkv, const float* __restrict__ table,
    const float* __restrict__ lse, T* __restrict__ dqkv, float* __restrict__ dtable, WinGeom g) {
  SEMASK_SHARED_MEMORY(smem);
  const int win = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int N = g.N, nwarps = blockDim.x / kWarp, warp = threadIdx.x / kWarp,
            lane = threadIdx.x % kWarp;
  float* Qs = smem;
  float* Ks = Qs + N * g.ld;
  float* Vs = Ks + N * g.ld;
  float* dOs = Vs + N * g.ld;
  float* Bs = dOs + N * g.ld;
  float* dBs = Bs + g.T2;
  float* Ls = dBs + g.T2;             // lse of each query row
  float* Dl = Ls + N;                 // Delta of each query row
  float* P = Dl + N + warp * 2 * N;   // this warp's probabilities ...
  float* S = P + N;                   // ... and dS (a row in pass 1, a column in pass 2)
  int* pix = reinterpret_cast<int*>(Dl + N + nwarps * 2 * N);
  int* lab = pix + N;
  int* ofs = lab + N;

  const int64_t lse_base = ((static_cast<int64_t>(b) * g.nW + win) * g.heads + h) * N;
  for (int t = threadIdx.x; t < N; t += blockDim.x) Ls[t] = lse[lse_base + t];
  for (int e = threadIdx.x; e < g.T2; e += blockDim.x) dBs[e] = 0.f;
  setup_window(g, b, win, h, table, pix, lab, ofs, Bs);
  load_qkv(g, h, qkv, pix, Qs, Ks, Vs);
  for (int e = threadIdx.x; e < N * 4 * g.D4; e += blockDim.x) {
    const int t = e / (4 * g.D4), d = e - t * 4 * g.D4;
    const int opix = out_pixel(g, pix[t]);  // padded rows: dO = 0
    dOs[t * g.ld + d] = d < g.D && opix >= 0
        ? static_cast<float>(dout[static_cast<int64_t>(opix) * g.C + h * g.D + d]) : 0.f;
  }
  __syncthreads();

  const int64_t C3 = 3 * static_cast<int64_t>(g.C);
  int lofs[kKeySlots], llab[kKeySlots];  // this lane's keys (pass 1) or queries (pass 2)
  lane_tokens(g, ofs, lab, 0, lofs, llab);
  // pass 1: query rows -> Delta, dQ
  for (int i = warp; i < N; i += nwarps) {
    const int qofs = ofs[i] + bias_center(g), qlab = lab[i];
    float p[kKeySlots], dp[kKeySlots];
    float delta = 0.f;
#pragma unroll
    for (int t = 0; t < kKeySlots; ++t) {
      const int j = lane + t * kWarp;
      p[t] = 0.f;
      dp[t] = 0.f;
      if (j < N) {
        p[t] = expf(score(g, Qs, Ks, Bs, i, j, qofs - lofs[t], qlab == llab[t]) - Ls[i]);
        dp[t] = dot4(dOs + i * g.ld, Vs + j * g.ld, g.D4);
        delta = fmaf(p[t], dp[t], delta);
      }
    }
    delta = warp_sum(delta);
#pragma unroll
    for (int t = 0; t < kKeySlots; ++t) {
      const int j = lane + t * kWarp;
      if (j < N) S[j] = p[t] * (dp[t] - delta);
    }
    if (lane == 0) Dl[i] = delta;
    __syncwarp();
    const int64_t row = pix[i] * C3 + h * g.D;
#pragma unroll
    for (int c = 0; c < kDimSlots; ++c) {
      const int d = lane + c * kWarp;
      if (d < g.D) {
        float acc = 0.f;
        for (int j = 0; j < N; ++j) acc = fmaf(S[j], Ks[j * g.ld + d], acc);
        dqkv[row + d] = static_cast<T>(acc * g.scale);
      }
    }
    __syncwarp();
  }
  __syncthreads();  // Dl complete

  // pass 2: key columns -> dK, dV, bias gradient
  for (int j = warp; j < N; j += nwarps) {
    const int kofs = bias_center(g) - ofs[j], klab = lab[j];
#pragma unroll
    for (int t = 0; t < kKeySlots; ++t) {
      const int i = lane + t * kWarp;
      if (i < N) {
        const int idx = lofs[t] + kofs;
        const float pij = expf(score(g, Qs, Ks, Bs, i, j, idx, llab[t] == klab) - Ls[i]);
        const float ds = pij * (dot4(dOs + i * g.ld, Vs + j * g.ld, g.D4) - Dl[i]);
        atomicAdd(&dBs[idx], ds);  // distinct entries across the warp
        P[i] = pij;
        S[i] = ds;
      }
    }
    __syncwarp();
    const int64_t row = pix[j] * C3 + h * g.D;
#pragma unroll
    for (int c = 0; c < kDimSlots; ++c) {
      const int d = lane + c * kWarp;
      if (d < g.D) {
        float dk = 0.f, dv = 0.f;
        for (int i = 0; i < N; ++i) {
          dk = fmaf(S[i], Qs[i * g.ld + d], dk);
          dv = fmaf(P[i], dOs[i * g.ld + d], dv);
        }
        dqkv[row + g.C + d] = static_cast<T>(dk * g.scale);
        dqkv[row + 2 * g.C + d] = static_cast<T>(dv);
      }
    }
    __syncwarp();
  }
  __syncthreads();  // dBs complete
  for (int e = threadIdx.x; e < g.T2; e += blockDim.x) atomicAdd(&dtable[e * g.heads + h], dBs[e]);
}

int block_threads(int N) { return N > 64 ? 256 : 128; }

size_t fwd_smem_bytes(const WinGeom& g, int nwarps) {
  return sizeof(float) * (3 * g.N * g.ld + g.T2 + nwarps * g.N) + sizeof(int) * 3 * g.N;
}

size_t bwd_smem_bytes(const WinGeom& g, int nwarps) {
  return sizeof(float) * (4 * g.N * g.ld + 2 * g.T2 + 2 * g.N + 2 * nwarps * g.N) +
         sizeof(int) * 3 * g.N;
}

}  // namespace

#ifndef SEMASK_CPU_EMULATION
namespace {

void check_inputs(const char* op, const at::Tensor& qkv, const at::Tensor& table) {
  check_cuda(op, "qkv", qkv);
  check_cuda(op, "table", table);
  check_same_device(op, "table", table, qkv, "qkv");
  check_float_dtype(op, "qkv", qkv);
  check_float_dtype(op, "table", table);
  check_contiguous(op, "qkv", qkv);
  check_contiguous(op, "table", table);
}

WinGeom make_geom(const char* op, const at::Tensor& qkv, const at::Tensor& table, int64_t heads,
               int64_t window, int64_t shift, double scale, int64_t height, int64_t width) {
  TORCH_CHECK(qkv.dim() == 4 && qkv.size(3) % 3 == 0, op,
              ": qkv must be [B, Hp, Wp, 3C], got ", shape_str(qkv.sizes()));
  const int64_t C = qkv.size(3) / 3;
  TORCH_CHECK(heads >= 1 && C >= heads && C % heads == 0, op, ": num_heads=", num(heads),
              " must divide C=", num(C), " (qkv ", shape_str(qkv.sizes()), ")");
  TORCH_CHECK(C / heads <= kMaxHeadDim, op, ": head dim ", num(C / heads), " > ", num(kMaxHeadDim),
              " is not supported");
  TORCH_CHECK(window >= 1 && window <= kMaxWindow, op, ": window=", num(window), " must lie in [1, ",
              num(kMaxWindow), "]");
  TORCH_CHECK(qkv.size(1) % window == 0 && qkv.size(2) % window == 0, op, ": qkv map ",
              num(qkv.size(1)), "x", num(qkv.size(2)), " is not a multiple of window ", num(window));
  TORCH_CHECK(shift >= 0 && shift < window, op, ": shift=", num(shift), " must lie in [0, window)");
  TORCH_CHECK(qkv.size(0) <= 65535 && qkv.size(0) * qkv.size(1) * qkv.size(2) < INT_MAX, op,
              ": qkv has too many pixels (batch <= 65535, B*Hp*Wp < 2^31)");
  const int64_t T2 = (2 * window - 1) * (2 * window - 1);
  check_shape(op, "table", table, {T2, heads});
  TORCH_CHECK(height >= 1 && height <= qkv.size(1) && width >= 1 && width <= qkv.size(2), op,
              ": out map ", num(height), "x", num(width), " must lie within the qkv map ",
              num(qkv.size(1)), "x", num(qkv.size(2)));
  return window_geom(qkv.size(1), qkv.size(2), height, width, C, heads, window, shift,
                     static_cast<float>(scale));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> window_attention_fwd(const at::Tensor& qkv,
                                                        const at::Tensor& table,
                                                        int64_t num_heads, int64_t window,
                                                        int64_t shift, double scale,
                                                        int64_t height, int64_t width) {
  const char* op = "semask window_attention_fwd";
  check_inputs(op, qkv, table);
  const WinGeom g = make_geom(op, qkv, table, num_heads, window, shift, scale, height, width);
  const int64_t B = qkv.size(0);
  auto out = at::empty({B, g.H, g.W, g.C}, qkv.options());
  auto lse = at::empty({B, g.nW, g.heads, g.N}, qkv.options().dtype(at::kFloat));
  if (B == 0 || g.nW == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(qkv.device());
  const auto table_f = table.to(at::kFloat);
  const int threads = block_threads(g.N);
  const size_t smem = fwd_smem_bytes(g, threads / kWarp);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SEMASK_DISPATCH(qkv.scalar_type(), "semask_window_attention_fwd", [&] {
    auto kernel = window_fwd_kernel<scalar_t>;
    allow_shared_memory(op, kernel, smem);
    kernel<<<dim3(g.nW, g.heads, B), threads, smem, stream>>>(
        qkv.data_ptr<scalar_t>(), table_f.data_ptr<float>(), out.data_ptr<scalar_t>(),
        lse.data_ptr<float>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> window_attention_bwd(
    const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& table, const at::Tensor& out,
    const at::Tensor& lse, int64_t num_heads, int64_t window, int64_t shift, double scale) {
  const char* op = "semask window_attention_bwd";
  // the bias-table gradient is summed with float atomics (as PyTorch's own such ops: raise or
  // warn under torch.use_deterministic_algorithms)
  at::globalContext().alertNotDeterministic("semask window_attention_bwd (cuda: bias-table gradient)");
  check_cuda(op, "dout", dout);
  check_inputs(op, qkv, table);
  check_cuda(op, "out", out);
  check_cuda(op, "lse", lse);
  check_same_device(op, "dout", dout, qkv, "qkv");
  check_same_device(op, "out", out, qkv, "qkv");
  check_same_device(op, "lse", lse, qkv, "qkv");
  check_dtype(op, "dout", dout, qkv.scalar_type());
  check_dtype(op, "out", out, qkv.scalar_type());
  check_dtype(op, "lse", lse, at::kFloat);
  check_contiguous(op, "dout", dout);
  check_contiguous(op, "out", out);
  check_contiguous(op, "lse", lse);
  TORCH_CHECK(dout.dim() == 4, op, ": dout must be [B, H, W, C], got ", shape_str(dout.sizes()));
  const WinGeom g =
      make_geom(op, qkv, table, num_heads, window, shift, scale, dout.size(1), dout.size(2));
  const int64_t B = qkv.size(0);
  check_shape(op, "dout", dout, {B, g.H, g.W, g.C});
  check_shape(op, "out", out, {B, g.H, g.W, g.C});
  check_shape(op, "lse", lse, {B, g.nW, g.heads, g.N});
  auto dqkv = at::empty_like(qkv);
  auto dtable = at::zeros({g.T2, g.heads}, table.options().dtype(at::kFloat));
  if (B == 0 || g.nW == 0) return {dqkv, dtable.to(table.scalar_type())};
  const c10::cuda::CUDAGuard guard(qkv.device());
  const auto table_f = table.to(at::kFloat);
  const int threads = block_threads(g.N);
  const size_t smem = bwd_smem_bytes(g, threads / kWarp);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  SEMASK_DISPATCH(qkv.scalar_type(), "semask_window_attention_bwd", [&] {
    auto kernel = window_bwd_kernel<scalar_t>;
    allow_shared_memory(op, kernel, smem);
    kernel<<<dim3(g.nW, g.heads, B), threads, smem, stream>>>(
        dout.data_ptr<scalar_t>(), qkv.data_ptr<scalar_t>(), table_f.data_ptr<float>(),
        lse.data_ptr<float>(), dqkv.data_ptr<scalar_t>(), dtable.data_ptr<float>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dqkv, dtable.to(table.scalar_type())};
}

int64_t window_attention_shared_memory(int64_t window, int64_t head_dim) {
  const WinGeom g = window_geom(window, window, window, window, head_dim, 1, window, 0, 1.0f);
  const int nwarps = block_threads(g.N) / kWarp;
  return static_cast<int64_t>(std::max(fwd_smem_bytes(g, nwarps), bwd_smem_bytes(g, nwarps)));
}

#endif  // SEMASK_CPU_EMULATION

}  // namespace semask
