// C = op(A) op(B) through Intel MKL's CBLAS, as an XLA FFI custom call on the CPU.
//
// A and B are both float32 or both bfloat16, 2-D, row-major; C is float32 (bf16 products
// accumulate in float32). op transposes when the trans_a / trans_b attribute is set, so the
// backward's transposed forms cost no copies. MKL runs sequentially; the handler splits C
// into row or column blocks and runs them on XLA's own intra-op thread pool, so no second
// pool competes with XLA's for the cores. Built and loaded by robertax/mkl_gemm.py.

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// CBLAS constants and the two entry points (MKL's LP64 interface: 32-bit integers).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
constexpr int kThreadingSequential = 1, kInterfaceLP64 = 0;
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                       int, float, float*, int);
using Bf16Gemm = void (*)(int, int, int, int, int, int, float, const uint16_t*, int,
                          const uint16_t*, int, float, float*, int);
using SetLayer = int (*)(int);

Sgemm g_sgemm = nullptr;
Bf16Gemm g_bf16gemm = nullptr;

struct Join {
  explicit Join(int total) : total(total) {}
  const int total;
  std::atomic<int> next{1};  // part 0 is the caller's
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  void Finish() {
    std::lock_guard<std::mutex> lock(mu);
    if (++done == total) cv.notify_all();
  }
};

ffi::Error Gemm(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b,
                ffi::Result<ffi::AnyBuffer> c, bool trans_a, bool trans_b) {
  if (g_sgemm == nullptr || g_bf16gemm == nullptr) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                      "robertax_mkl_gemm: MKL is not loaded (robertax.mkl_gemm.load)");
  }
  const auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() != 2 || db.size() != 2 || dc.size() != 2) {
    return ffi::Error::InvalidArgument("robertax_mkl_gemm: operands must be 2-D");
  }
  const ffi::DataType type = a.element_type();
  if (b.element_type() != type || (type != ffi::DataType::F32 && type != ffi::DataType::BF16) ||
      c->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument(
        "robertax_mkl_gemm: A and B must be both float32 or both bfloat16, C float32");
  }
  const int64_t M = trans_a ? da[1] : da[0], K = trans_a ? da[0] : da[1];
  const int64_t Kb = trans_b ? db[1] : db[0], N = trans_b ? db[0] : db[1];
  if (K != Kb || dc[0] != M || dc[1] != N) {
    return ffi::Error::InvalidArgument("robertax_mkl_gemm: shapes do not match");
  }
  if (std::max({da[0], da[1], db[0], db[1], dc[0], dc[1]}) > INT_MAX) {
    return ffi::Error::InvalidArgument("robertax_mkl_gemm: a dimension exceeds 2^31 - 1");
  }
  if (M == 0 || N == 0) return ffi::Error::Success();

  const int64_t lda = da[1], ldb = db[1], ldc = N;
  const int64_t size = type == ffi::DataType::F32 ? 4 : 2;
  const char* pa = static_cast<const char*>(a.untyped_data());
  const char* pb = static_cast<const char*>(b.untyped_data());
  float* pc = static_cast<float*>(c->untyped_data());

  // Blocks of C's rows (taking A's rows) or columns (taking B's columns), whichever is longer.
  const bool by_rows = M >= N;
  const int64_t extent = by_rows ? M : N;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int parts = static_cast<int>(std::clamp<int64_t>(extent / 64, 1, threads));
  const int ta = trans_a ? kTrans : kNoTrans, tb = trans_b ? kTrans : kNoTrans;

  auto run = [=](int part) {
    const int64_t lo = extent * part / parts, hi = extent * (part + 1) / parts;
    const char* a0 = pa;
    const char* b0 = pb;
    float* c0 = pc;
    int64_t m = M, n = N;
    if (by_rows) {
      a0 += (trans_a ? lo : lo * lda) * size;
      c0 += lo * ldc;
      m = hi - lo;
    } else {
      b0 += (trans_b ? lo * ldb : lo) * size;
      c0 += lo;
      n = hi - lo;
    }
    if (size == 4) {
      g_sgemm(kRowMajor, ta, tb, m, n, K, 1.0f, reinterpret_cast<const float*>(a0), lda,
              reinterpret_cast<const float*>(b0), ldb, 0.0f, c0, ldc);
    } else {
      g_bf16gemm(kRowMajor, ta, tb, m, n, K, 1.0f, reinterpret_cast<const uint16_t*>(a0), lda,
                 reinterpret_cast<const uint16_t*>(b0), ldb, 0.0f, c0, ldc);
    }
  };
  if (parts == 1) {
    run(0);
    return ffi::Error::Success();
  }
  // Parts 1.. go to the pool; whichever thread claims a part first runs it, the caller
  // included, so the call finishes even while every pool thread is busy elsewhere.
  auto join = std::make_shared<Join>(parts);
  auto claim = [join, run]() {
    for (int p; (p = join->next.fetch_add(1)) < join->total;) {
      run(p);
      join->Finish();
    }
  };
  for (int p = 1; p < parts; ++p) pool.Schedule(decltype(claim)(claim));
  run(0);
  join->Finish();
  claim();
  std::unique_lock<std::mutex> lock(join->mu);
  join->cv.wait(lock, [&] { return join->done == join->total; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RobertaxMklGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

// Loads MKL's single dynamic library (libmkl_rt) and picks the sequential threading layer.
// Returns an empty string on success, else the reason.
extern "C" const char* robertax_mkl_load(const char* path) {
  static std::string error;
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return (error = std::string("dlopen: ") + dlerror()).c_str();
  auto threading = reinterpret_cast<SetLayer>(dlsym(lib, "MKL_Set_Threading_Layer"));
  auto interface = reinterpret_cast<SetLayer>(dlsym(lib, "MKL_Set_Interface_Layer"));
  auto sgemm = reinterpret_cast<Sgemm>(dlsym(lib, "cblas_sgemm"));
  auto bf16gemm = reinterpret_cast<Bf16Gemm>(dlsym(lib, "cblas_gemm_bf16bf16f32"));
  if (!threading || !interface || !sgemm || !bf16gemm) {
    return (error = std::string(path) + " lacks MKL_Set_Threading_Layer, "
                    "MKL_Set_Interface_Layer, cblas_sgemm or cblas_gemm_bf16bf16f32").c_str();
  }
  if (interface(kInterfaceLP64) != kInterfaceLP64) {
    return (error = "MKL is already set to another interface layer than LP64").c_str();
  }
  if (threading(kThreadingSequential) != kThreadingSequential) {
    return (error = "MKL is already set to another threading layer than sequential").c_str();
  }
  g_sgemm = sgemm;
  g_bf16gemm = bf16gemm;
  return "";
}
