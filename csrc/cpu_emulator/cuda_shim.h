// The CUDA built-ins used by the semask kernels, for running their device code on the CPU
// (tests only: no GPU is needed to check indexing, barriers, shuffles and bounds).
//
// Each CUDA thread of a block is a cooperative fiber (ucontext) on one OS thread. A fiber
// runs until it reaches a barrier (__syncthreads, __syncwarp, or a shuffle, which is a
// write, a warp barrier, a read and a second warp barrier), then the next fiber runs. So a
// missing barrier shows up as a read of data another thread has not written yet (shared
// memory starts as NaN). Blocks run one after another; 1-D blocks of whole warps only.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;  // threadIdx: the running fiber's
struct alignas(16) float4 {
  float x, y, z, w;
};
using std::max;
using std::min;

namespace emu {

constexpr int kWarp = 32;

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};

struct Block {
  std::function<void()> body;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = 0;
  long progress = 0;  // barrier arrivals and finished fibers (deadlock detection)
  int block_arrived = 0;
  long block_gen = 0;
  std::vector<int> warp_arrived;
  std::vector<long> warp_gen;
  std::vector<float> slots;  // shuffle exchange, kWarp per warp
  std::vector<float> smem;   // dynamic shared memory, exactly the launch's size
};

inline Block* g_block = nullptr;

inline void yield() {
  Block& b = *g_block;
  swapcontext(&b.fibers[b.current].ctx, &b.scheduler);
}

inline void sync_block() {
  Block& b = *g_block;
  ++b.progress;
  const long gen = b.block_gen;
  if (++b.block_arrived == static_cast<int>(b.fibers.size())) {
    b.block_arrived = 0;
    ++b.block_gen;
  } else {
    while (b.block_gen == gen) yield();
  }
}

inline void sync_warp() {
  Block& b = *g_block;
  ++b.progress;
  const int w = threadIdx.x / kWarp;
  const long gen = b.warp_gen[w];
  if (++b.warp_arrived[w] == kWarp) {
    b.warp_arrived[w] = 0;
    ++b.warp_gen[w];
  } else {
    while (b.warp_gen[w] == gen) yield();
  }
}

inline float shuffle(float v, int src_lane) {
  Block& b = *g_block;
  const int base = (threadIdx.x / kWarp) * kWarp;
  b.slots[base + threadIdx.x % kWarp] = v;
  sync_warp();
  const float r = b.slots[base + (src_lane & (kWarp - 1))];
  sync_warp();
  return r;
}

inline float* shared_memory() { return g_block->smem.data(); }

inline void fiber_main() {
  Block& b = *g_block;
  b.body();
  b.fibers[b.current].done = true;
  ++b.progress;
  swapcontext(&b.fibers[b.current].ctx, &b.scheduler);
}

// Run body() as one block of `threads` CUDA threads with block index `bid`.
inline void run_block(dim3 grid, dim3 bid, int threads, size_t smem_bytes,
                      const std::function<void()>& body) {
  if (threads % kWarp) throw std::runtime_error("emulator: blocks of whole warps only");
  Block b;
  b.body = body;
  b.fibers.resize(threads);
  b.warp_arrived.assign(threads / kWarp, 0);
  b.warp_gen.assign(threads / kWarp, 0);
  b.slots.assign(threads, 0.f);
  b.smem.assign((smem_bytes + sizeof(float) - 1) / sizeof(float), NAN);
  g_block = &b;
  gridDim = grid;
  blockIdx = bid;
  blockDim = dim3(threads);
  for (auto& f : b.fibers) {
    f.stack.resize(1 << 18);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  for (bool all_done = false; !all_done;) {
    const long before = b.progress;
    all_done = true;
    for (int t = 0; t < threads; ++t) {
      if (b.fibers[t].done) continue;
      b.current = t;
      threadIdx = dim3(t);
      swapcontext(&b.scheduler, &b.fibers[t].ctx);
      all_done = all_done && b.fibers[t].done;
    }
    if (!all_done && b.progress == before) throw std::runtime_error("emulator: barrier deadlock");
  }
  g_block = nullptr;
}

// A kernel launch: every block of `grid`, one after another.
inline void launch(dim3 grid, int threads, size_t smem_bytes, const std::function<void()>& body) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(grid, dim3(x, y, z), threads, smem_bytes, body);
}

}  // namespace emu

inline float __shfl_sync(unsigned, float v, int src_lane) { return emu::shuffle(v, src_lane); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  return emu::shuffle(v, static_cast<int>(threadIdx.x % emu::kWarp) ^ lane_mask);
}
inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }
inline float atomicAdd(float* address, float v) {  // fibers never interleave inside a call
  const float old = *address;
  *address = old + v;
  return old;
}
