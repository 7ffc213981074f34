// Shared pieces of the semask CUDA kernels: warp reductions, dtype dispatch, input checks,
// dynamic shared memory set-up. With SEMASK_CPU_EMULATION defined only the device code is
// compiled, against cpu_emulator/cuda_shim.h (tests run it on the CPU).
#pragma once
#ifdef SEMASK_CPU_EMULATION
#include "cpu_emulator/cuda_shim.h"
#define SEMASK_SHARED_MEMORY(name) float* name = emu::shared_memory()
#else
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#define SEMASK_SHARED_MEMORY(name) extern __shared__ __align__(16) float name[]
#endif

namespace semask {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Row stride (floats) for tiles read with float4 loads, lane-indexed rows included: a
// multiple of 4 that is 4 x odd, so 8 lanes of a 128-bit load phase hit distinct banks.
inline int vec_stride(int width) {
  const int w4 = (width + 3) / 4 * 4;
  return (w4 / 4) % 2 ? w4 : w4 + 4;
}

// sum_c a[c] * b[c] over n4 float4 chunks (16-byte aligned; summed in order c = 0, 1, ...)
__device__ __forceinline__ float dot4(const float* a, const float* b, int n4) {
  const float4* a4 = reinterpret_cast<const float4*>(a);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  float acc = 0.f;
#pragma unroll 4
  for (int c = 0; c < n4; ++c) {
    const float4 x = a4[c], y = b4[c];
    acc = fmaf(x.x, y.x, acc);
    acc = fmaf(x.y, y.y, acc);
    acc = fmaf(x.z, y.z, acc);
    acc = fmaf(x.w, y.w, acc);
  }
  return acc;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

#ifndef SEMASK_CPU_EMULATION
// float32, float16 and bfloat16 only (no float64 kernels are compiled).
#define SEMASK_DISPATCH(TYPE, NAME, ...)                         \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                 \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

// Numbers enter TORCH_CHECK messages as strings: streaming an integer or an IntArrayRef
// into the message from nvcc-compiled code crashed (SIGSEGV) on the H200 machine (torch
// 2.11, nvcc 13.0, g++ 13.3), while messages made of strings, devices and dtypes raised.
template <typename T>
inline std::string num(T value) {
  return std::to_string(value);
}

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device(),
              " (the semask cuda backend runs on CUDA tensors only)");
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
}

inline void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16, got ", s);
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, op, ": ", name, " must be ", expected, ", got ",
              t.scalar_type());
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// "[a, b, c]" built by hand (see num).
inline std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        std::initializer_list<int64_t> expected) {
  const at::IntArrayRef want(expected);
  TORCH_CHECK(t.sizes().equals(want), op, ": ", name, " must have shape ", shape_str(want),
              ", got ", shape_str(t.sizes()));
}

// Allow `bytes` of dynamic shared memory for `kernel` on the current device (opt-in above
// 48 KB), with a clear error when the device has less. The allowance is a property of the
// kernel on a device, so it is only ever raised, under a lock: a launch with fewer bytes
// from another host thread never lowers it between this thread's set-up and launch.
template <typename Kernel>
void allow_shared_memory(const char* op, Kernel kernel, size_t bytes) {
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), op, ": needs ", num(bytes),
              " bytes of shared memory per block for these shapes, the device allows ", num(optin));
  static std::mutex lock;
  static std::map<std::pair<const void*, int>, size_t> allowed;  // (kernel, device) -> bytes
  const std::lock_guard<std::mutex> hold(lock);
  size_t& current = allowed[{reinterpret_cast<const void*>(kernel), device}];
  if (bytes > current) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
    current = bytes;
  }
}

#endif  // SEMASK_CPU_EMULATION

}  // namespace semask
