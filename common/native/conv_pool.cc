// Convolution followed by max pooling on the CPU, as XLA FFI handlers (see common/native/__init__.py
// and common/conv_pool.py for the contract; the tests compare both against a brute-force loop and
// PyTorch).
//
//   headlab_conv_max_pool_fwd: x [n, H, W, C_in] f32 (NHWC), w [k, k, C_in, C_out] f32 (HWIO,
//     C_out a multiple of 16), attr pool
//     -> out [n, H_p, W_p, C_out] f32: max over each pool x pool window of the VALID, stride-1
//        convolution (H_p = (H - k + 1) / pool, floor);
//        first [n, H_p, W_p, C_out] u8: the row-major index within the window of its first maximum
//        (torch's max_pool2d routing; a NaN counts as the maximum, as in XLA's max).
//   headlab_conv_max_pool_dw: x, g [n, H_p, W_p, C_out] f32 (the pooled cotangent), first,
//     attrs k, pool
//     -> dw [n, k * k * C_in, C_out] f32: each image's kernel gradient (rows (kh, kw, c_in)); the
//        caller sums over n. Per image, so the call shards over the batch.
//   headlab_conv_max_pool_dx: g, first, wt [k, k, C_out, C_in] f32 (the kernel with its two
//     channel axes swapped; C_in a multiple of 16), attr pool
//     -> dx [n, H, W, C_in] f32: the input cotangent (H, W from the result's shape).
//
// All three split the images over XLA's intra-op thread pool. The 16 output channels of a block are one
// 64-byte vector (GCC vector extensions: one AVX-512 register, two AVX2 ones).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <type_traits>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kPosBlock = 8;  // output positions (forward) or kernel taps (dw) held in registers

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

struct Shape {
  int64_t n, h, w, cin, k, cout, pool, hp, wp, wo;
};

// One conv output row segment: y[j][o] for j in [j0, j0 + R), one 16-channel block ob. CIN and K
// are the input channels and kernel size when known at compile time (0: read from s).
template <int R, int CIN, int K>
inline void ConvBlock(const Shape& s, const float* x, const float* w, int64_t row, int64_t j0,
                      int64_t ob, float* y) {
  const int64_t cin = CIN ? CIN : s.cin, k = K ? K : s.k;
  v16 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = v16{};
  for (int64_t kh = 0; kh < k; ++kh) {
    const float* xr = x + (row + kh) * s.w * cin;
    for (int64_t kw = 0; kw < k; ++kw) {
      const float* xp = xr + (j0 + kw) * cin;
      const float* wp = w + ((kh * k + kw) * cin) * s.cout + ob * kLanes;
      for (int64_t c = 0; c < cin; ++c) {
        v16 wv = load16(wp + c * s.cout);
        for (int r = 0; r < R; ++r) acc[r] += xp[r * cin + c] * wv;
      }
    }
  }
  for (int r = 0; r < R; ++r) store16(y + (j0 + r) * s.cout + ob * kLanes, acc[r]);
}

// Calls f(std::integral_constant<int, R>{}, i0) over [0, n) in blocks of kPosBlock, then one
// block of the remainder (so every pass over the data keeps several accumulators busy).
template <typename F>
inline void Blocked(int64_t n, F f) {
  int64_t i = 0;
  for (; i + kPosBlock <= n; i += kPosBlock) f(std::integral_constant<int, kPosBlock>{}, i);
  switch (n - i) {
    case 1: f(std::integral_constant<int, 1>{}, i); break;
    case 2: f(std::integral_constant<int, 2>{}, i); break;
    case 3: f(std::integral_constant<int, 3>{}, i); break;
    case 4: f(std::integral_constant<int, 4>{}, i); break;
    case 5: f(std::integral_constant<int, 5>{}, i); break;
    case 6: f(std::integral_constant<int, 6>{}, i); break;
    case 7: f(std::integral_constant<int, 7>{}, i); break;
    default: break;
  }
}
static_assert(kPosBlock == 8, "Blocked's remainder cases assume blocks of 8");

template <int CIN, int K>
void ConvRowT(const Shape& s, const float* x, const float* w, int64_t row, float* y) {
  for (int64_t ob = 0; ob < s.cout / kLanes; ++ob)
    Blocked(s.wo, [&](auto r, int64_t j) { ConvBlock<decltype(r)::value, CIN, K>(s, x, w, row, j, ob, y); });
}

// Conv output row `row` of one image, the wo positions the pool reads: y [wo, C_out].
void ConvRow(const Shape& s, const float* x, const float* w, int64_t row, float* y) {
  if (s.cin == 3 && s.k == 5) return ConvRowT<3, 5>(s, x, w, row, y);  // an RGB 5 x 5 layer
  if (s.cin == 3 && s.k == 3) return ConvRowT<3, 3>(s, x, w, row, y);
  ConvRowT<0, 0>(s, x, w, row, y);
}

void ForwardImage(const Shape& s, const float* x, const float* w, float* out, uint8_t* first) {
  std::vector<float> y(s.wo * s.cout);
  // the running maximum and its window index (as a float, exact up to 255) of one pooled row
  std::vector<float> m(s.wp * s.cout), f(s.wp * s.cout);
  for (int64_t ph = 0; ph < s.hp; ++ph) {
    for (int64_t a = 0; a < s.pool; ++a) {
      ConvRow(s, x, w, ph * s.pool + a, y.data());
      for (int64_t pw = 0; pw < s.wp; ++pw) {
        for (int64_t b = 0; b < s.pool; ++b) {
          const float* yv = y.data() + (pw * s.pool + b) * s.cout;
          float* mv = m.data() + pw * s.cout;
          float* fv = f.data() + pw * s.cout;
          const float idx = static_cast<float>(a * s.pool + b);
          if (a == 0 && b == 0) {
            std::memcpy(mv, yv, s.cout * sizeof(float));
            std::fill(fv, fv + s.cout, 0.0f);
            continue;
          }
          for (int64_t o = 0; o < s.cout; o += kLanes) {
            v16 yo = load16(yv + o), mo = load16(mv + o);
            // the first maximum wins ties; a NaN replaces any number and is never replaced
            auto take = (yo > mo) | ((yo != yo) & (mo == mo));
            store16(mv + o, take ? yo : mo);
            store16(fv + o, take ? v16{} + idx : load16(fv + o));
          }
        }
      }
    }
    float* mo = out + ph * s.wp * s.cout;
    uint8_t* fo = first + ph * s.wp * s.cout;
    std::memcpy(mo, m.data(), s.wp * s.cout * sizeof(float));
    for (int64_t i = 0; i < s.wp * s.cout; ++i) fo[i] = static_cast<uint8_t>(f[i]);
  }
}

// A routed position of one pooled row band: where its patch starts in the image and its routed
// cotangent in the band's buffer.
struct Hit {
  int64_t x_off, g_off;
};

// dw rows t in [t0, t0 + T) (t = (kh, kw, c)), block ob, += the sum over the routed positions of
// one pooled row band.
template <int T>
inline void DwBlock(const Shape& s, const float* x, const float* gr, const std::vector<Hit>& hits,
                    int64_t t0, int64_t ob, float* dw) {
  int64_t off[T];
  for (int t = 0; t < T; ++t) {
    int64_t tt = t0 + t, c = tt % s.cin, kw = (tt / s.cin) % s.k, kh = tt / (s.cin * s.k);
    off[t] = (kh * s.w + kw) * s.cin + c;
  }
  v16 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = v16{};
  for (const Hit& hit : hits) {
    v16 gv = load16(gr + hit.g_off + ob * kLanes);
    const float* xp = x + hit.x_off;
    for (int t = 0; t < T; ++t) acc[t] += xp[off[t]] * gv;
  }
  for (int t = 0; t < T; ++t) {
    float* d = dw + (t0 + t) * s.cout + ob * kLanes;
    store16(d, load16(d) + acc[t]);
  }
}

void DwImage(const Shape& s, const float* x, const float* g, const uint8_t* first, float* dw) {
  const int64_t taps = s.k * s.k * s.cin;
  std::memset(dw, 0, taps * s.cout * sizeof(float));
  // the routed cotangent of one pooled row band: gr [pool, wo, C_out], and its nonzero positions
  std::vector<float> gr(s.pool * s.wo * s.cout);
  std::vector<uint8_t> nonzero(s.pool * s.wo);
  std::vector<Hit> hits;
  hits.reserve(s.pool * s.wo);
  for (int64_t ph = 0; ph < s.hp; ++ph) {
    std::fill(gr.begin(), gr.end(), 0.0f);
    std::fill(nonzero.begin(), nonzero.end(), 0);
    const float* gv = g + ph * s.wp * s.cout;
    const uint8_t* fv = first + ph * s.wp * s.cout;
    for (int64_t pw = 0; pw < s.wp; ++pw) {
      for (int64_t o = 0; o < s.cout; ++o) {
        int64_t idx = fv[pw * s.cout + o], a = idx / s.pool, b = idx % s.pool;
        int64_t pos = a * s.wo + pw * s.pool + b;
        float v = gv[pw * s.cout + o];
        gr[pos * s.cout + o] = v;
        nonzero[pos] |= (v != 0.0f);
      }
    }
    hits.clear();
    for (int64_t a = 0; a < s.pool; ++a)
      for (int64_t j = 0; j < s.wo; ++j)
        if (nonzero[a * s.wo + j])
          hits.push_back({((ph * s.pool + a) * s.w + j) * s.cin, (a * s.wo + j) * s.cout});
    if (hits.empty()) continue;
    for (int64_t ob = 0; ob < s.cout / kLanes; ++ob)
      Blocked(taps, [&](auto r, int64_t t) { DwBlock<decltype(r)::value>(s, x, gr.data(), hits, t, ob, dw); });
  }
}

// dx [H, W, C_in_pad] of one image: each pooled cotangent routed to its window's first maximum and
// spread through the kernel, wt [k, k, C_out_pad, C_in_pad] (C_in_pad a multiple of 16).
void DxImage(const Shape& s, const float* g, const uint8_t* first, const float* wt, float* dx) {
  std::memset(dx, 0, s.h * s.w * s.cin * sizeof(float));
  for (int64_t ph = 0; ph < s.hp; ++ph) {
    for (int64_t pw = 0; pw < s.wp; ++pw) {
      const float* gv = g + (ph * s.wp + pw) * s.cout;
      const uint8_t* fv = first + (ph * s.wp + pw) * s.cout;
      for (int64_t o = 0; o < s.cout; ++o) {
        const float go = gv[o];
        if (go == 0.0f) continue;
        const int64_t row = ph * s.pool + fv[o] / s.pool, col = pw * s.pool + fv[o] % s.pool;
        for (int64_t kh = 0; kh < s.k; ++kh) {
          for (int64_t kw = 0; kw < s.k; ++kw) {
            float* d = dx + ((row + kh) * s.w + col + kw) * s.cin;
            const float* wv = wt + ((kh * s.k + kw) * s.cout + o) * s.cin;
            for (int64_t c = 0; c < s.cin; c += kLanes) store16(d + c, load16(d + c) + go * load16(wv + c));
          }
        }
      }
    }
  }
}

// The shape of a call on images x [n, h, w, cin] (``dims``) with a k x k kernel into cout
// channels and a pool x pool pool, checked.
template <typename Dims>
ffi::Error ShapeOf(const Dims& d, int64_t k, int64_t cout, int64_t pool, Shape* s) {
  *s = Shape{d[0], d[1], d[2], d[3], k, cout, pool, 0, 0, 0};
  if (k < 1 || pool < 1 || pool * pool > 255 || cout % kLanes != 0)
    return ffi::Error::InvalidArgument("conv_max_pool: k >= 1, 1 <= pool <= 15 and C_out % 16 == 0 expected");
  s->hp = (s->h - k + 1) / pool;
  s->wp = (s->w - k + 1) / pool;
  if (s->hp < 1 || s->wp < 1) return ffi::Error::InvalidArgument("conv_max_pool: images too small");
  s->wo = s->wp * pool;
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool_threads, ffi::Buffer<ffi::F32, 4> x,
                   ffi::Buffer<ffi::F32, 4> w, int64_t pool, ffi::ResultBuffer<ffi::F32, 4> out,
                   ffi::ResultBuffer<ffi::U8, 4> first) {
  auto wd = w.dimensions();
  Shape s;
  if (wd[0] != wd[1] || wd[2] != x.dimensions()[3])
    return ffi::Error::InvalidArgument("conv_max_pool: a square HWIO kernel matching C_in expected");
  ffi::Error e = ShapeOf(x.dimensions(), wd[0], wd[3], pool, &s);
  if (e.failure()) return e;
  const float* xs = x.typed_data();
  const float* ws = w.typed_data();
  float* os = out->typed_data();
  uint8_t* fs = first->typed_data();
  const int64_t in_size = s.h * s.w * s.cin, out_size = s.hp * s.wp * s.cout;
  headlab::ParallelFor(pool_threads, s.n, [&](int64_t i) {
    ForwardImage(s, xs + i * in_size, ws, os + i * out_size, fs + i * out_size);
  });
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool_threads, ffi::Buffer<ffi::F32, 4> x,
                      ffi::Buffer<ffi::F32, 4> g, ffi::Buffer<ffi::U8, 4> first, int64_t k,
                      int64_t pool, ffi::ResultBuffer<ffi::F32, 3> dw) {
  auto gd = g.dimensions();
  Shape s;
  ffi::Error e = ShapeOf(x.dimensions(), k, gd[3], pool, &s);
  if (e.failure()) return e;
  if (s.hp != gd[1] || s.wp != gd[2] || gd[0] != s.n)
    return ffi::Error::InvalidArgument("conv_max_pool_dw: cotangent shape does not match the images");
  const float* xs = x.typed_data();
  const float* gs = g.typed_data();
  const uint8_t* fs = first.typed_data();
  float* ds = dw->typed_data();
  const int64_t in_size = s.h * s.w * s.cin, out_size = s.hp * s.wp * s.cout;
  const int64_t dw_size = s.k * s.k * s.cin * s.cout;
  headlab::ParallelFor(pool_threads, s.n, [&](int64_t i) {
    DwImage(s, xs + i * in_size, gs + i * out_size, fs + i * out_size, ds + i * dw_size);
  });
  return ffi::Error::Success();
}

ffi::Error InputGrad(ffi::ThreadPool pool_threads, ffi::Buffer<ffi::F32, 4> g,
                     ffi::Buffer<ffi::U8, 4> first, ffi::Buffer<ffi::F32, 4> wt, int64_t pool,
                     ffi::ResultBuffer<ffi::F32, 4> dx) {
  auto gd = g.dimensions(), wd = wt.dimensions(), xd = dx->dimensions();
  if (wd[0] != wd[1] || wd[2] != gd[3] || wd[3] != xd[3] || xd[3] % kLanes != 0)
    return ffi::Error::InvalidArgument("conv_max_pool_dx: kernel [k, k, C_out, C_in % 16 == 0] expected");
  Shape s;
  ffi::Error e = ShapeOf(xd, wd[0], gd[3], pool, &s);
  if (e.failure()) return e;
  if (s.hp != gd[1] || s.wp != gd[2] || gd[0] != s.n)
    return ffi::Error::InvalidArgument("conv_max_pool_dx: cotangent shape does not match the images");
  const float* gs = g.typed_data();
  const uint8_t* fs = first.typed_data();
  const float* ws = wt.typed_data();
  float* ds = dx->typed_data();
  const int64_t in_size = s.h * s.w * s.cin, out_size = s.hp * s.wp * s.cout;
  headlab::ParallelFor(pool_threads, s.n, [&](int64_t i) {
    DxImage(s, gs + i * out_size, fs + i * out_size, ws, ds + i * in_size);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HeadlabConvMaxPoolFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Attr<int64_t>("pool")
                                  .Ret<ffi::BufferR4<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::U8>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HeadlabConvMaxPoolDw, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::U8>>()
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("pool")
                                  .Ret<ffi::BufferR3<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HeadlabConvMaxPoolDx, InputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::U8>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Attr<int64_t>("pool")
                                  .Ret<ffi::BufferR4<ffi::F32>>());
