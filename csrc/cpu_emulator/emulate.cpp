// CPU emulation driver of the semask kernels (tests only; see cuda_shim.h). It launches
// the real device code of ../window_attention.cu and ../semantic_attention.cu (float32)
// with the grids, block sizes and shared-memory sizes of their host launchers.
//
//   semask_emu window   DIR B Hp Wp H W C heads window shift scale
//   semask_emu semantic DIR B Hp Wp K C window
//
// Reads raw float32 files from DIR (window: qkv, table, dout; semantic: q, k, v, dout),
// runs the forward and then the backward on the forward's out and lse, and writes
// out, lse and the gradients (window: dqkv, dtable; semantic: dq, dk, dv) back to DIR.
// Outputs start as NaN, so an element a kernel never writes shows up in the comparison.
#include "../semantic_attention.cu"
#include "../window_attention.cu"

#include <cstdio>
#include <fstream>
#include <string>

namespace {

std::vector<float> read(const std::string& dir, const char* name, size_t n) {
  std::ifstream f(dir + "/" + name, std::ios::binary | std::ios::ate);
  if (!f || static_cast<size_t>(f.tellg()) != n * sizeof(float))
    throw std::runtime_error(std::string("bad input file ") + name);
  std::vector<float> v(n);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), n * sizeof(float));
  return v;
}

void write(const std::string& dir, const char* name, const std::vector<float>& v) {
  std::ofstream f(dir + "/" + name, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

void run_window(char** a) {
  using namespace semask;
  const std::string dir = a[0];
  const int B = std::stoi(a[1]);
  const WinGeom g = window_geom(std::stoi(a[2]), std::stoi(a[3]), std::stoi(a[4]),
                                std::stoi(a[5]), std::stoi(a[6]), std::stoi(a[7]), std::stoi(a[8]),
                                std::stoi(a[9]), std::stof(a[10]));
  const size_t pixels = static_cast<size_t>(B) * g.Hp * g.Wp;
  const size_t out_pixels = static_cast<size_t>(B) * g.H * g.W;
  const auto qkv = read(dir, "qkv", pixels * 3 * g.C);
  const auto table = read(dir, "table", static_cast<size_t>(g.T2) * g.heads);
  const auto dout = read(dir, "dout", out_pixels * g.C);
  std::vector<float> out(out_pixels * g.C, NAN), lse(static_cast<size_t>(B) * g.nW * g.heads * g.N, NAN);
  std::vector<float> dqkv(qkv.size(), NAN), dtable(table.size(), 0.f);
  const int threads = block_threads(g.N);
  const dim3 grid(g.nW, g.heads, B);
  emu::launch(grid, threads, fwd_smem_bytes(g, threads / kWarp), [&] {
    window_fwd_kernel<float>(qkv.data(), table.data(), out.data(), lse.data(), g);
  });
  emu::launch(grid, threads, bwd_smem_bytes(g, threads / kWarp), [&] {
    window_bwd_kernel<float>(dout.data(), qkv.data(), table.data(), lse.data(), dqkv.data(),
                             dtable.data(), g);
  });
  write(dir, "out", out);
  write(dir, "lse", lse);
  write(dir, "dqkv", dqkv);
  write(dir, "dtable", dtable);
}

void run_semantic(char** a) {
  using namespace semask;
  const std::string dir = a[0];
  const int B = std::stoi(a[1]);
  const SemGeom g = semantic_geom(std::stoi(a[2]), std::stoi(a[3]), std::stoi(a[4]),
                                  std::stoi(a[5]), std::stoi(a[6]));
  const size_t pixels = static_cast<size_t>(B) * g.Hp * g.Wp;
  const auto q = read(dir, "q", pixels * g.K), k = read(dir, "k", pixels * g.K);
  const auto v = read(dir, "v", pixels * g.C), dout = read(dir, "dout", pixels * g.C);
  const int64_t rows = static_cast<int64_t>(B) * g.nW * g.N;
  std::vector<float> out(v.size(), NAN), lse(rows, NAN), delta(rows, NAN);
  std::vector<float> dq(q.size(), NAN), dk(k.size(), NAN), dv(v.size(), NAN);
  const unsigned bw = B * g.nW, tiles = cdiv(g.N, kTile), chunks = cdiv(g.C, kChunk);
  emu::launch(dim3(bw, tiles, chunks), kThreads, fwd_smem_bytes(g), [&] {
    sem_fwd_kernel<float>(q.data(), k.data(), v.data(), out.data(), lse.data(), g);
  });
  emu::launch(dim3(cdiv(rows, kWarps)), kThreads, 0, [&] {
    sem_delta_kernel<float>(dout.data(), out.data(), delta.data(), rows, g);
  });
  emu::launch(dim3(bw, tiles), kThreads, dq_smem_bytes(g), [&] {
    sem_dq_kernel<float>(dout.data(), q.data(), k.data(), v.data(), lse.data(), delta.data(),
                         dq.data(), g);
  });
  emu::launch(dim3(bw, tiles), kThreads, dk_smem_bytes(g), [&] {
    sem_dk_kernel<float>(dout.data(), q.data(), k.data(), v.data(), lse.data(), delta.data(),
                         dk.data(), g);
  });
  emu::launch(dim3(bw, tiles, chunks), kThreads, dv_smem_bytes(g), [&] {
    sem_dv_kernel<float>(dout.data(), q.data(), k.data(), lse.data(), dv.data(), g);
  });
  write(dir, "out", out);
  write(dir, "lse", lse);
  write(dir, "dq", dq);
  write(dir, "dk", dk);
  write(dir, "dv", dv);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string op = argc > 1 ? argv[1] : "";
  try {
    if (op == "window" && argc == 13) {
      run_window(argv + 2);
    } else if (op == "semantic" && argc == 9) {
      run_semantic(argv + 2);
    } else {
      std::fprintf(stderr, "usage: semask_emu window DIR B Hp Wp H W C heads window shift scale\n"
                           "       semask_emu semantic DIR B Hp Wp K C window\n");
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "semask_emu: %s\n", e.what());
    return 1;
  }
  return 0;
}
