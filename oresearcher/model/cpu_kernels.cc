// CPU kernels for decoding, as XLA FFI custom calls (built and registered by cpu_kernels.py, whose docstring has
// the why and the measurements):
//   PanelMatmul      y [M, J] = x [M, K] @ W [K, J], W packed in panels of 32 columns
//   DecodeAttention  grouped-query attention of a few query positions over a KV cache
// Work is shared out to XLA's intra-op thread pool in chunks taken from an atomic counter; the calling thread
// takes chunks too, so a call never waits on a task that has not started (when the pool is busy it only runs on
// fewer threads, it cannot deadlock).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 32;  // columns per panel: two vectors of 16 floats
constexpr int kRows = 8;        // rows of x per tile
typedef float Vec __attribute__((vector_size(64), aligned(4)));  // GCC/Clang lower it to the machine's vectors

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ------------------------------------------------------------------------------------------- panel matmul
// Packed layout: w[p, k, c] = W[k, 32 p + c], shape [J / 32, K, 32]. One panel is read front to back, once per
// 8 rows of x: a tile keeps 8 rows x 32 columns of y in 16 vector accumulators, and each step over k loads two
// vectors of W and broadcasts 8 scalars of x. With a few rows (a decode step) the weights stream from memory at
// close to the machine's read bandwidth, which is what bounds decoding; with many rows (prefill) the tile is
// compute bound and runs about as fast as XLA's own GEMM.

// y[m, j0 + c] for m < R, c < min(32, J - j0), from R rows of x and one panel w [K, 32].
template <int R>
void Tile(const float* x, int64_t K, const float* w, float* y, int64_t J, int64_t j0) {
  Vec acc[R][2];
  for (int m = 0; m < R; ++m) acc[m][0] = acc[m][1] = Vec{};
  for (int64_t k = 0; k < K; ++k) {
    const Vec w0 = Load(w + k * kPanel), w1 = Load(w + k * kPanel + 16);
    for (int m = 0; m < R; ++m) {
      const float s = x[m * K + k];
      acc[m][0] += s * w0;
      acc[m][1] += s * w1;
    }
  }
  const int64_t n = std::min<int64_t>(kPanel, J - j0);
  for (int m = 0; m < R; ++m) {
    float out[kPanel];
    std::memcpy(out, &acc[m][0], sizeof(Vec));
    std::memcpy(out + 16, &acc[m][1], sizeof(Vec));
    std::memcpy(y + m * J + j0, out, n * sizeof(float));
  }
}

void Panel(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t J, int64_t p) {
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const float* xm = x + m0 * K;
    float* ym = y + m0 * J;
    const int64_t j0 = p * kPanel;
    switch (std::min<int64_t>(kRows, M - m0)) {
      case 8: Tile<8>(xm, K, w, ym, J, j0); break;
      case 7: Tile<7>(xm, K, w, ym, J, j0); break;
      case 6: Tile<6>(xm, K, w, ym, J, j0); break;
      case 5: Tile<5>(xm, K, w, ym, J, j0); break;
      case 4: Tile<4>(xm, K, w, ym, J, j0); break;
      case 3: Tile<3>(xm, K, w, ym, J, j0); break;
      case 2: Tile<2>(xm, K, w, ym, J, j0); break;
      default: Tile<1>(xm, K, w, ym, J, j0); break;
    }
  }
}

inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// fn(i) for i in [0, n), on up to the pool's threads; `work` is the call's size (multiply-adds), below which
// waking a thread costs more than it saves.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t work, F fn) {
  if (n <= 0) return;
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads =
      work < (int64_t{1} << 16) ? 1 : std::max<int64_t>(1, std::min({pool.num_threads(), cores, n}));
  if (threads == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // about 8 chunks per thread: fine enough to even out, few enough that the counter costs nothing. The state is
  // shared with the helpers: one that starts after the call returned finds no chunk left and drops its reference.
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t per_chunk, chunks, n;
    F fn;
    State(F f) : fn(std::move(f)) {}
    void Work() {
      for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
        for (int64_t i = c * per_chunk, end = std::min(n, (c + 1) * per_chunk); i < end; ++i) fn(i);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>(std::move(fn));
  state->n = n;
  state->per_chunk = std::max<int64_t>(1, n / (8 * threads));
  state->chunks = (n + state->per_chunk - 1) / state->per_chunk;
  for (int64_t i = 1; i < threads; ++i) pool.Schedule([state] { state->Work(); });
  state->Work();
  while (state->done.load(std::memory_order_acquire) < state->chunks) Pause();
}

ffi::Error PanelMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() == 0 || yd.size() == 0 || wd.size() != 3 || wd[2] != kPanel)
    return ffi::Error::InvalidArgument("panel_matmul: the weight must be packed as [J / 32, K, 32]");
  const int64_t K = xd.back(), J = yd.back();
  const int64_t M = K ? static_cast<int64_t>(x.element_count()) / K : 0;
  if (wd[1] != K || wd[0] * kPanel < J || M * J != static_cast<int64_t>(y->element_count()))
    return ffi::Error::InvalidArgument("panel_matmul: x [M, K], packed weight [J / 32, K, 32] and y [M, J] "
                                       "do not agree");
  if (M == 0 || J == 0) return ffi::Error::Success();
  const float *xp = x.typed_data(), *wp = w.typed_data();
  float* yp = y->typed_data();
  ParallelFor(pool, (J + kPanel - 1) / kPanel, M * K * J,
              [=](int64_t p) { Panel(xp, M, K, wp + p * K * kPanel, yp, J, p); });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------- attention
// q [B, T, H, hd], k/v caches [B, KV, S, hd] of which the first W slots are read, mask [B, T, W] (true: visible)
// -> out [B, T, H, hd]. Query head h reads KV head h / (H / KV). Per (b, kv head), the G x T query rows sharing it
// go over the cache together: each K row and each V row is read once. Scores and softmax in fp32, the same maths
// as decoder.attention: q scaled by hd^-1/2 before the product, masked slots excluded, and a row with no visible
// slot gets uniform weights over the W slots (such rows are padding; their outputs are never used).
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));

// The sum of a vector's lanes by halving (a lane-by-lane sum is a 16-long dependency chain).
inline float HSum(Vec v) {
  Vec8 lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const Vec8 s8 = lo + hi;
  Vec4 a, b;
  std::memcpy(&a, &s8, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + sizeof a, sizeof b);
  const Vec4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

typedef int32_t VecI __attribute__((vector_size(64)));

// e^x for x <= 0 (softmax weights), 16 lanes at a time: x = k ln2 + r with |r| <= ln2 / 2, e^r by its Taylor
// series to r^7 (relative error below 1e-7, as close as expf), 2^k put in the exponent bits. Below -87, where
// e^x leaves the normal floats, it gives about 1e-38 instead of a denormal or 0 (a weight that adds nothing).
inline Vec Exp(Vec x) {
  x = x < -87.f ? Vec{} - 87.f : x;
  const Vec kf = (x * 1.44269504f + 12582912.f) - 12582912.f;      // round(x / ln2), via the float mantissa
  const Vec r = (x - kf * 0.693145752f) - kf * 1.42860677e-6f;      // ln2 in two parts: r exact enough
  Vec e = Vec{} + 1.f / 5040.f;
  e = e * r + 1.f / 720.f;
  e = e * r + 1.f / 120.f;
  e = e * r + 1.f / 24.f;
  e = e * r + 1.f / 6.f;
  e = e * r + 0.5f;
  e = e * r + 1.f;
  e = e * r + 1.f;
  const VecI bits = (__builtin_convertvector(kf, VecI) + 127) << 23;
  Vec scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return e * scale;
}

// p[i] = e^(p[i] - mx) for i < n; returns their sum.
inline float ExpShifted(float* p, int64_t n, float mx) {
  Vec sum = Vec{};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const Vec e = Exp(Load(p + i) - mx);
    std::memcpy(p + i, &e, sizeof e);
    sum += e;
  }
  float total = HSum(sum);
  if (i < n) {                          // the tail through a padded vector (padding: e^-87, not stored)
    float tail[16];
    for (int j = 0; j < 16; ++j) tail[j] = i + j < n ? p[i + j] - mx : -87.f;
    const Vec e = Exp(Load(tail));
    std::memcpy(tail, &e, sizeof e);
    for (int64_t j = 0; i + j < n; ++j) {
      p[i + j] = tail[j];
      total += tail[j];
    }
  }
  return total;
}

// One query row q [hd] (unscaled) over the cache rows k/v [S, hd] whose slots are listed in vis [n] (the visible
// ones; W slots in the window): softmax(q k^T / sqrt(hd)) over them into p [n], then the weighted sum of their v
// rows into out [hd]. N: hd / 16 when hd is a multiple of 16 (then q and the sums live in registers), 0 for any hd.
template <int N>
void AttendRow(const float* q, const float* kc, const float* vc, const int32_t* vis, int64_t n, int64_t W,
               int64_t hd, float scale, float* p, float* out) {
  if (n == 0) {                         // nothing visible: uniform weights over the window, as decoder.attention
    for (int64_t d = 0; d < hd; ++d) out[d] = 0.f;
    for (int64_t s = 0; s < W; ++s)
      for (int64_t d = 0; d < hd; ++d) out[d] += vc[s * hd + d];
    for (int64_t d = 0; d < hd; ++d) out[d] /= static_cast<float>(W);
    return;
  }
  float mx = -std::numeric_limits<float>::infinity();
  if constexpr (N > 0) {
    Vec qv[N];
    for (int j = 0; j < N; ++j) qv[j] = Load(q + 16 * j) * scale;
    for (int64_t i = 0; i < n; ++i) {
      const float* k = kc + vis[i] * 16 * N;
      Vec acc = qv[0] * Load(k);
      for (int j = 1; j < N; ++j) acc += qv[j] * Load(k + 16 * j);
      p[i] = HSum(acc);
      mx = std::max(mx, p[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float* k = kc + vis[i] * hd;
      float sc = 0.f;
      for (int64_t d = 0; d < hd; ++d) sc += (q[d] * scale) * k[d];
      p[i] = sc;
      mx = std::max(mx, sc);
    }
  }
  const float inv = 1.f / ExpShifted(p, n, mx);
  if constexpr (N > 0) {
    Vec acc[N];
    for (int j = 0; j < N; ++j) acc[j] = Vec{};
    for (int64_t i = 0; i < n; ++i) {
      const float w = p[i];
      const float* v = vc + vis[i] * 16 * N;
      for (int j = 0; j < N; ++j) acc[j] += w * Load(v + 16 * j);
    }
    for (int j = 0; j < N; ++j) {
      const Vec o = acc[j] * inv;
      std::memcpy(out + 16 * j, &o, sizeof o);
    }
  } else {
    for (int64_t d = 0; d < hd; ++d) out[d] = 0.f;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < hd; ++d) out[d] += p[i] * vc[vis[i] * hd + d];
    for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
  }
}

// The G query rows of one position that share a KV head, together (hd = 16 N): each visible K and V row is loaded
// once for all of them. Otherwise the same maths as AttendRow; p is [G, n].
template <int N, int G>
void AttendGroup(const float* q, const float* kc, const float* vc, const int32_t* vis, int64_t n, int64_t W,
                 int64_t hd, float scale, float* p, float* out) {
  if (n == 0) {
    for (int g = 0; g < G; ++g) AttendRow<N>(q + g * hd, kc, vc, vis, 0, W, hd, scale, p, out + g * hd);
    return;
  }
  Vec qv[G][N];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < N; ++j) qv[g][j] = Load(q + g * hd + 16 * j) * scale;
  float mx[G];
  for (int g = 0; g < G; ++g) mx[g] = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    Vec k[N];
    for (int j = 0; j < N; ++j) k[j] = Load(kc + vis[i] * hd + 16 * j);
    for (int g = 0; g < G; ++g) {
      Vec acc = qv[g][0] * k[0];
      for (int j = 1; j < N; ++j) acc += qv[g][j] * k[j];
      const float sc = HSum(acc);
      p[g * n + i] = sc;
      mx[g] = std::max(mx[g], sc);
    }
  }
  float inv[G];
  for (int g = 0; g < G; ++g) inv[g] = 1.f / ExpShifted(p + g * n, n, mx[g]);
  Vec acc[G][N];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < N; ++j) acc[g][j] = Vec{};
  for (int64_t i = 0; i < n; ++i) {
    Vec v[N];
    for (int j = 0; j < N; ++j) v[j] = Load(vc + vis[i] * hd + 16 * j);
    for (int g = 0; g < G; ++g) {
      const float w = p[g * n + i];
      for (int j = 0; j < N; ++j) acc[g][j] += w * v[j];
    }
  }
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < N; ++j) {
      const Vec o = acc[g][j] * inv[g];
      std::memcpy(out + g * hd + 16 * j, &o, sizeof o);
    }
}

using GroupFn = void (*)(const float*, const float*, const float*, const int32_t*, int64_t, int64_t, int64_t, float,
                         float*, float*);

template <int N>
GroupFn GroupFor(int64_t g) {
  switch (g) {
    case 1: return &AttendGroup<N, 1>;
    case 2: return &AttendGroup<N, 2>;
    case 3: return &AttendGroup<N, 3>;
    case 4: return &AttendGroup<N, 4>;
    case 5: return &AttendGroup<N, 5>;
    case 6: return &AttendGroup<N, 6>;
    case 7: return &AttendGroup<N, 7>;
    case 8: return &AttendGroup<N, 8>;
    default: return nullptr;
  }
}

ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                               ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                               ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), md = mask.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || md.size() != 3 || vd.size() != 4)
    return ffi::Error::InvalidArgument("decode_attention: need q [B, T, H, hd], k/v [B, KV, S, hd], mask [B, T, W]");
  const int64_t B = qd[0], T = qd[1], H = qd[2], hd = qd[3], KV = kd[1], S = kd[2], W = md[2];
  if (kd[0] != B || kd[3] != hd || KV == 0 || H % KV != 0 || vd[0] != B || vd[1] != KV || vd[2] != S ||
      vd[3] != hd || md[0] != B || md[1] != T || W > S || W == 0)
    return ffi::Error::InvalidArgument("decode_attention: q, k, v and mask shapes do not agree");
  const int64_t G = H / KV;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const bool* mp = mask.typed_data();
  float* op = out->typed_data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  auto row = &AttendRow<0>;
  switch (hd) {
    case 16: row = &AttendRow<1>; break;
    case 32: row = &AttendRow<2>; break;
    case 64: row = &AttendRow<4>; break;
    case 128: row = &AttendRow<8>; break;
    case 256: row = &AttendRow<16>; break;
    default: break;
  }
  // the G query heads of a KV head together where hd is 64 or 128 and G <= 8 (Llama, Qwen2, Qwen3), else row by row
  const GroupFn group = hd == 64 ? GroupFor<4>(G) : hd == 128 ? GroupFor<8>(G) : nullptr;
  // one task per (row b, KV head): its G x T query rows read the same cache rows, which stay in cache between them
  ParallelFor(pool, B * KV, B * KV * G * T * W * hd * 2, [=](int64_t i) {
    const int64_t b = i / KV, kh = i % KV;
    const float* kc = kp + (b * KV + kh) * S * hd;
    const float* vc = vp + (b * KV + kh) * S * hd;
    thread_local std::vector<float> p;
    thread_local std::vector<int32_t> vis;
    p.resize(G * W);
    vis.resize(W);
    for (int64_t t = 0; t < T; ++t) {
      const bool* m = mp + (b * T + t) * W;
      int64_t n = 0;
      for (int64_t s = 0; s < W; ++s)
        if (m[s]) vis[n++] = static_cast<int32_t>(s);
      const int64_t at = ((b * T + t) * H + kh * G) * hd;           // query heads kh * G + g at position t
      if (group != nullptr) {
        group(qp + at, kc, vc, vis.data(), n, W, hd, scale, p.data(), op + at);
        continue;
      }
      for (int64_t g = 0; g < G; ++g)
        row(qp + at + g * hd, kc, vc, vis.data(), n, W, hd, scale, p.data(), op + at + g * hd);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OresearcherPanelMatmul, PanelMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(OresearcherDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
