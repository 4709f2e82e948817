// Multi-scale multi-view bilinear sampling (spec 5.1): CUDA forward and backward kernels.
//
// Work decomposition (both directions): one block per query row (bb, q), its warps loop over the
// row's P sampling points; one warp handles one sample (bb, q, p) at a time. Inside the warp, the
// channel vector of a texel is covered by LT = C/V lanes ("a lane group"), each lane owning V
// contiguous channels (16-byte loads when C and the pointers allow it); the 32/LT lane groups of
// the warp take different (level, corner) items of the same sample, so one warp-wide load fetches
// several bilinear corners at once. Per sample, the geometry (view, corner indices and weights) is
// computed once per lane, not once per channel as in the published op.
//
// Forward: partial sums are reduced over the lane groups with xor-shuffles, staged in a
// [C][points] shared-memory tile and written as contiguous runs of the [BB, Q, C, P] output.
// Backward: the [C][points] slice of grad_out is staged in shared memory; feature gradients are
// scattered with (vector, on sm_90) atomics into fp32/fp64 buffers; location and level-weight
// gradients are warp reductions written by one lane: no atomics and no contention on them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <vector>

namespace ops_csrc {

constexpr int kMaxLevels = 6;
constexpr int kMaxWarps = 4;        // warps per block (one block per query row)
constexpr int kMaxPointTile = 32;   // points per shared-memory tile
constexpr int kSmemBudget = 48 * 1024;
constexpr unsigned kFullMask = 0xffffffffu;

int msmv_max_levels() { return kMaxLevels; }

// ------------------------------------------------------------------------------------------------
// Element types: how a feature element is stored, and the type sums are accumulated in (fp32 for
// every type but fp64). Half types are handled through their bit patterns so that the build's
// __CUDA_NO_HALF_CONVERSIONS__ flags do not matter.
template <typename scalar_t> struct Traits;

template <> struct Traits<float> {
  using store_t = float;
  using acc_t = float;
  __device__ static __forceinline__ float load(float x) { return x; }
  __device__ static __forceinline__ float store(float x) { return x; }
};

template <> struct Traits<double> {
  using store_t = double;
  using acc_t = double;
  __device__ static __forceinline__ double load(double x) { return x; }
  __device__ static __forceinline__ double store(double x) { return x; }
};

template <> struct Traits<at::Half> {
  using store_t = unsigned short;
  using acc_t = float;
  __device__ static __forceinline__ float load(unsigned short x) {
    return __half2float(__ushort_as_half(x));
  }
  __device__ static __forceinline__ unsigned short store(float x) {
    return __half_as_ushort(__float2half_rn(x));
  }
};

template <> struct Traits<at::BFloat16> {
  using store_t = unsigned short;
  using acc_t = float;
  // bf16 is the upper half of an fp32: widening is exact.
  __device__ static __forceinline__ float load(unsigned short x) {
    return __uint_as_float(static_cast<unsigned>(x) << 16);
  }
  __device__ static __forceinline__ unsigned short store(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  }
};

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// V contiguous elements as one (up to 16-byte) load; the caller guarantees the alignment.
template <typename scalar_t, int V, typename acc_t>
__device__ __forceinline__ void load_vec(const typename Traits<scalar_t>::store_t* p, acc_t (&f)[V]) {
  using store_t = typename Traits<scalar_t>::store_t;
  const Pack<store_t, V> x = *reinterpret_cast<const Pack<store_t, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) f[i] = Traits<scalar_t>::load(x.v[i]);
}

__device__ __forceinline__ float dfloor(float x) { return floorf(x); }
__device__ __forceinline__ double dfloor(double x) { return floor(x); }
__device__ __forceinline__ float dmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double dmax(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float dmin(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double dmin(double a, double b) { return fmin(a, b); }

// Feature-gradient scatter. sm_90 has 8- and 16-byte float atomics (one instruction for 2 or 4
// channels); older archs and fp64 fall back to one atomic per element.
template <int V>
__device__ __forceinline__ void atomic_add_vec(float* p, const float (&g)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4)
      atomicAdd(reinterpret_cast<float4*>(p + i), make_float4(g[i], g[i + 1], g[i + 2], g[i + 3]));
  } else if constexpr (V % 2 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 2) atomicAdd(reinterpret_cast<float2*>(p + i), make_float2(g[i], g[i + 1]));
  } else
#endif
  {
#pragma unroll
    for (int i = 0; i < V; ++i) atomicAdd(p + i, g[i]);
  }
}

template <int V>
__device__ __forceinline__ void atomic_add_vec(double* p, const double (&g)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) atomicAdd(p + i, g[i]);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) x += __shfl_xor_sync(kFullMask, x, m);
  return x;
}

// ------------------------------------------------------------------------------------------------
// Geometry of one sample.

// view = round(view_norm * (N - 1)). Clamped into [0, N-1] (NaN -> 0 through fmax) so that no
// input can make the kernel read outside the feature tensor; for inputs in [0, 1] this is a no-op.
template <typename acc_t>
__device__ __forceinline__ int view_index(acc_t view_norm, int N) {
  acc_t z = view_norm * static_cast<acc_t>(N - 1);
  z = dmin(dmax(z, acc_t(0)), static_cast<acc_t>(N - 1));
  return static_cast<int>(dfloor(z + acc_t(0.5)));
}

// Corner `corner` (bit 1: +1 row, bit 0: +1 column) of the bilinear footprint of (u, v) on an
// H x W map, align_corners=True: h = v*(H-1), w = u*(W-1) in pixels, pixel centres on integers.
// Returns false when the corner contributes nothing: the sample is outside (-1, H) x (-1, W)
// (also for NaN) or the corner lies outside the map (zero padding). On true, (y, x) is the texel
// and wy, wx are its row and column weights (corner weight = wy * wx).
template <typename acc_t>
__device__ __forceinline__ bool corner_geometry(acc_t u, acc_t v, int H, int W, int corner, int& y,
                                                int& x, acc_t& wy, acc_t& wx) {
  const acc_t h = v * static_cast<acc_t>(H - 1);
  const acc_t w = u * static_cast<acc_t>(W - 1);
  // Written so that NaN fails; it also bounds h, w before the float -> int conversions below.
  if (!(h > acc_t(-1) && h < static_cast<acc_t>(H) && w > acc_t(-1) && w < static_cast<acc_t>(W)))
    return false;
  const acc_t hf = dfloor(h), wf = dfloor(w);
  const int dy = corner >> 1, dx = corner & 1;
  y = static_cast<int>(hf) + dy;
  x = static_cast<int>(wf) + dx;
  if (y < 0 || y >= H || x < 0 || x >= W) return false;
  const acc_t lh = h - hf, lw = w - wf;
  wy = dy ? lh : acc_t(1) - lh;
  wx = dx ? lw : acc_t(1) - lw;
  return true;
}

template <typename store_t, typename acc_t>
struct LevelArgs {
  const store_t* feat[kMaxLevels];  // [BB, N, H, W, C] channel-last
  acc_t* grad[kMaxLevels];          // same shape, accumulation type; unused in the forward
  int H[kMaxLevels];
  int W[kMaxLevels];
  int64_t plane[kMaxLevels];        // H * W * C: elements of one (bb, view) map (< 2^31, checked)
};

struct LaunchShape {
  int L, N, C, Q, P;
  int PT;       // points per shared-memory tile
  int lt_log2;  // log2(lanes per texel)
  int chunks;   // channel chunks each lane loops over (C > 32 * V)
};

// ------------------------------------------------------------------------------------------------
// Forward. Grid: one block per row = bb * Q + q; block: min(4, PT) warps.
// loc [BB, Q, P, 3] (u, v, view_norm), wts [BB, Q, P, L] (acc_t); out [BB, Q, C, P] (scalar_t).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kMaxWarps * 32)
msmv_forward_kernel(const LevelArgs<typename Traits<scalar_t>::store_t, typename Traits<scalar_t>::acc_t> lv,
                    const LaunchShape sh, const typename Traits<scalar_t>::acc_t* __restrict__ loc,
                    const typename Traits<scalar_t>::acc_t* __restrict__ wts,
                    typename Traits<scalar_t>::store_t* __restrict__ out) {
  using T = Traits<scalar_t>;
  using acc_t = typename T::acc_t;
  using store_t = typename T::store_t;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);  // [C][PT + 1]: +1 avoids bank conflicts

  const int64_t row = blockIdx.x;
  const int bb = static_cast<int>(row / sh.Q);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int LT = 1 << sh.lt_log2, S = 32 >> sh.lt_log2;
  const int group = lane >> sh.lt_log2, sub = lane & (LT - 1);
  const int K = 4 * sh.L;  // (level, corner) items of one sample
  const int steps = (K + S - 1) / S;
  const int ldt = sh.PT + 1;

  for (int p0 = 0; p0 < sh.P; p0 += sh.PT) {
    const int pn = min(sh.PT, sh.P - p0);
    for (int pi = warp; pi < pn; pi += nwarps) {
      const int64_t s = row * sh.P + p0 + pi;
      const acc_t u = loc[3 * s], v = loc[3 * s + 1];
      const int view = view_index(loc[3 * s + 2], sh.N);
      const int64_t view_row = static_cast<int64_t>(bb) * sh.N + view;
      const acc_t* ws = wts + s * sh.L;
      for (int ch = 0; ch < sh.chunks; ++ch) {
        const int c0 = (ch * LT + sub) * V;
        acc_t acc[V];
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = acc_t(0);
        if (c0 < sh.C) {
#pragma unroll 4
          for (int st = 0; st < steps; ++st) {
            const int k = st * S + group;
            if (k < K) {
              const int l = k >> 2;
              const int H = lv.H[l], W = lv.W[l];
              int y, x;
              acc_t wy, wx;
              if (corner_geometry(u, v, H, W, k & 3, y, x, wy, wx)) {
                // 64-bit only for the map's base; the offset inside one map fits 32 bits
                const int in_map = (y * W + x) * sh.C + c0;
                acc_t f[V];
                load_vec<scalar_t, V>(lv.feat[l] + view_row * lv.plane[l] + in_map, f);
                const acc_t cw = wy * wx * ws[l];
#pragma unroll
                for (int i = 0; i < V; ++i) acc[i] += cw * f[i];
              }
            }
          }
        }
        // Sum the items of all lane groups: after the butterfly every group holds the total.
        for (int m = LT; m < 32; m <<= 1) {
#pragma unroll
          for (int i = 0; i < V; ++i) acc[i] += __shfl_xor_sync(kFullMask, acc[i], m);
        }
        if (group == 0 && c0 < sh.C) {
#pragma unroll
          for (int i = 0; i < V; ++i) tile[(c0 + i) * ldt + pi] = acc[i];
        }
      }
    }
    __syncthreads();
    // out[row, c, p0:p0+pn] are contiguous runs: consecutive threads write consecutive points.
    store_t* orow = out + row * sh.C * sh.P + p0;
    for (int idx = threadIdx.x; idx < sh.C * pn; idx += blockDim.x) {
      const int c = idx / pn, i = idx - c * pn;
      orow[static_cast<int64_t>(c) * sh.P + i] = T::store(tile[c * ldt + i]);
    }
    __syncthreads();  // the tile is overwritten by the next point chunk
  }
}

// ------------------------------------------------------------------------------------------------
// Backward. Same grid and lane layout as the forward.
// grad_out [BB, Q, C, P] (scalar_t); writes grad_loc [BB, Q, P, 3] (view column = 0),
// grad_wts [BB, Q, P, L] (every element), and adds into lv.grad[l] when feat_grad.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kMaxWarps * 32)
msmv_backward_kernel(const LevelArgs<typename Traits<scalar_t>::store_t, typename Traits<scalar_t>::acc_t> lv,
                     const LaunchShape sh, const typename Traits<scalar_t>::acc_t* __restrict__ loc,
                     const typename Traits<scalar_t>::acc_t* __restrict__ wts,
                     const typename Traits<scalar_t>::store_t* __restrict__ grad_out,
                     typename Traits<scalar_t>::acc_t* __restrict__ grad_loc,
                     typename Traits<scalar_t>::acc_t* __restrict__ grad_wts, const bool feat_grad) {
  using T = Traits<scalar_t>;
  using acc_t = typename T::acc_t;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);  // grad_out slice [C][PT + 1]

  const int64_t row = blockIdx.x;
  const int bb = static_cast<int>(row / sh.Q);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int LT = 1 << sh.lt_log2, S = 32 >> sh.lt_log2;
  const int group = lane >> sh.lt_log2, sub = lane & (LT - 1);
  const int K = 4 * sh.L;
  const int steps = (K + S - 1) / S;
  const int ldt = sh.PT + 1;

  for (int p0 = 0; p0 < sh.P; p0 += sh.PT) {
    const int pn = min(sh.PT, sh.P - p0);
    const typename T::store_t* grow = grad_out + row * sh.C * sh.P + p0;
    for (int idx = threadIdx.x; idx < sh.C * pn; idx += blockDim.x) {
      const int c = idx / pn, i = idx - c * pn;
      tile[c * ldt + i] = T::load(grow[static_cast<int64_t>(c) * sh.P + i]);
    }
    __syncthreads();

    for (int pi = warp; pi < pn; pi += nwarps) {
      const int64_t s = row * sh.P + p0 + pi;
      const acc_t u = loc[3 * s], v = loc[3 * s + 1];
      const int view = view_index(loc[3 * s + 2], sh.N);
      const int64_t view_row = static_cast<int64_t>(bb) * sh.N + view;
      const acc_t* ws = wts + s * sh.L;
      // Lane-partial sums of d out / d u, d v and d out / d weight_l (over channels and items).
      acc_t du = acc_t(0), dv = acc_t(0);
      acc_t dw[kMaxLevels];
#pragma unroll
      for (int j = 0; j < kMaxLevels; ++j) dw[j] = acc_t(0);

      for (int ch = 0; ch < sh.chunks; ++ch) {
        const int c0 = (ch * LT + sub) * V;
        if (c0 >= sh.C) continue;
        acc_t g[V];
#pragma unroll
        for (int i = 0; i < V; ++i) g[i] = tile[(c0 + i) * ldt + pi];
#pragma unroll 4
        for (int st = 0; st < steps; ++st) {
          const int k = st * S + group;
          if (k >= K) continue;
          const int l = k >> 2;
          const int H = lv.H[l], W = lv.W[l];
          int y, x;
          acc_t wy, wx;
          if (!corner_geometry(u, v, H, W, k & 3, y, x, wy, wx)) continue;
          const int64_t elem = view_row * lv.plane[l] + (y * W + x) * sh.C + c0;
          acc_t f[V];
          load_vec<scalar_t, V>(lv.feat[l] + elem, f);
          acc_t dot = acc_t(0);
#pragma unroll
          for (int i = 0; i < V; ++i) dot += g[i] * f[i];
          const acc_t wl = ws[l];
          // Indexed with compile-time constants only, so dw stays in registers.
#pragma unroll
          for (int j = 0; j < kMaxLevels; ++j)
            if (j == l) dw[j] += wy * wx * dot;
          // d(corner weight)/dw = +-wy (column +1 / +0), d/dh = +-wx; dw/du = W-1, dh/dv = H-1.
          const acc_t sx = (k & 1) ? wy : -wy;
          const acc_t sy = (k & 2) ? wx : -wx;
          du += wl * static_cast<acc_t>(W - 1) * sx * dot;
          dv += wl * static_cast<acc_t>(H - 1) * sy * dot;
          if (feat_grad) {
            const acc_t cw = wy * wx * wl;
            acc_t gv[V];
#pragma unroll
            for (int i = 0; i < V; ++i) gv[i] = cw * g[i];
            atomic_add_vec<V>(lv.grad[l] + elem, gv);
          }
        }
      }
      du = warp_sum(du);
      dv = warp_sum(dv);
#pragma unroll
      for (int j = 0; j < kMaxLevels; ++j)
        if (j < sh.L) dw[j] = warp_sum(dw[j]);  // sh.L is uniform: no divergent shuffles
      if (lane == 0) {
        grad_loc[3 * s] = du;
        grad_loc[3 * s + 1] = dv;
        grad_loc[3 * s + 2] = acc_t(0);  // the view index is piecewise constant in view_norm
#pragma unroll
        for (int j = 0; j < kMaxLevels; ++j)
          if (j < sh.L) grad_wts[s * sh.L + j] = dw[j];
      }
    }
    __syncthreads();  // the tile is overwritten by the next point chunk
  }
}

// ------------------------------------------------------------------------------------------------
// Host side. Inputs are validated by msmv_sampling.cpp; here only launch geometry is derived.

namespace {

template <typename scalar_t>
int pick_vector_width(const std::vector<at::Tensor>& feats, int C) {
  constexpr int kMaxV = 16 / static_cast<int>(sizeof(scalar_t));
  for (int V = kMaxV; V > 1; V /= 2) {
    bool ok = C % V == 0;
    for (const auto& f : feats)
      ok = ok && reinterpret_cast<std::uintptr_t>(f.data_ptr()) % (V * sizeof(scalar_t)) == 0;
    if (ok) return V;
  }
  return 1;
}

LaunchShape make_shape(const std::vector<at::Tensor>& feats, const at::Tensor& loc, int V,
                       size_t acc_size) {
  LaunchShape sh;
  sh.L = static_cast<int>(feats.size());
  sh.N = static_cast<int>(feats[0].size(1));
  sh.C = static_cast<int>(feats[0].size(4));
  sh.Q = static_cast<int>(loc.size(1));
  sh.P = static_cast<int>(loc.size(2));
  const int vectors = sh.C / V;
  int lt = 1, lt_log2 = 0;
  while (lt < vectors && lt < 32) {
    lt <<= 1;
    ++lt_log2;
  }
  sh.lt_log2 = lt_log2;
  sh.chunks = (vectors + lt - 1) / lt;
  const int64_t max_pt = static_cast<int64_t>(kSmemBudget) / (static_cast<int64_t>(sh.C) * acc_size) - 1;
  TORCH_CHECK(max_pt >= 1, "msmv_sampling: C = ", sh.C, " channels do not fit the kernel's ",
              kSmemBudget / 1024, " KB shared-memory tile; split the channels into groups of at most ",
              kSmemBudget / (2 * acc_size), " and sample each group separately");
  sh.PT = static_cast<int>(std::min<int64_t>({static_cast<int64_t>(sh.P), kMaxPointTile, max_pt}));
  return sh;
}

template <typename scalar_t, typename F>
void dispatch_vector_width(int V, F&& launch) {
  constexpr int kMaxV = 16 / static_cast<int>(sizeof(scalar_t));
  switch (V) {
    case 8:
      if constexpr (kMaxV >= 8) { launch(std::integral_constant<int, 8>{}); return; }
      break;
    case 4:
      if constexpr (kMaxV >= 4) { launch(std::integral_constant<int, 4>{}); return; }
      break;
    case 2:
      if constexpr (kMaxV >= 2) { launch(std::integral_constant<int, 2>{}); return; }
      break;
    case 1:
      launch(std::integral_constant<int, 1>{});
      return;
  }
  TORCH_CHECK(false, "msmv_sampling: internal error, unsupported vector width ", V);
}

template <typename store_t, typename acc_t>
LevelArgs<store_t, acc_t> make_levels(const std::vector<at::Tensor>& feats,
                                      const std::vector<at::Tensor>& grads) {
  LevelArgs<store_t, acc_t> lv;
  for (int l = 0; l < kMaxLevels; ++l) {
    const bool used = l < static_cast<int>(feats.size());
    lv.feat[l] = used ? reinterpret_cast<const store_t*>(feats[l].data_ptr()) : nullptr;
    lv.grad[l] = used && !grads.empty() ? reinterpret_cast<acc_t*>(grads[l].data_ptr()) : nullptr;
    lv.H[l] = used ? static_cast<int>(feats[l].size(2)) : 1;
    lv.W[l] = used ? static_cast<int>(feats[l].size(3)) : 1;
    lv.plane[l] = used ? feats[l].size(2) * feats[l].size(3) * feats[l].size(4) : 0;
  }
  return lv;
}

}  // namespace

at::Tensor msmv_forward_launch(const std::vector<at::Tensor>& feats, const at::Tensor& loc,
                               const at::Tensor& wts) {
  const c10::cuda::CUDAGuard guard(feats[0].device());
  const auto& f0 = feats[0];
  auto out = at::empty({loc.size(0), loc.size(1), f0.size(4), loc.size(2)}, f0.options());
  const int64_t rows = loc.size(0) * loc.size(1);
  if (out.numel() == 0) return out;
  TORCH_CHECK(rows <= INT32_MAX, "msmv_sampling: BB * Q = ", rows, " exceeds the grid limit 2^31-1");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, f0.scalar_type(),
                                  "msmv_forward", [&] {
    using store_t = typename Traits<scalar_t>::store_t;
    using acc_t = typename Traits<scalar_t>::acc_t;
    const int V = pick_vector_width<scalar_t>(feats, static_cast<int>(f0.size(4)));
    const LaunchShape sh = make_shape(feats, loc, V, sizeof(acc_t));
    const auto lv = make_levels<store_t, acc_t>(feats, {});
    const int threads = 32 * std::min(kMaxWarps, sh.PT);
    const size_t smem = static_cast<size_t>(sh.C) * (sh.PT + 1) * sizeof(acc_t);
    dispatch_vector_width<scalar_t>(V, [&](auto vw) {
      constexpr int kV = decltype(vw)::value;
      msmv_forward_kernel<scalar_t, kV><<<static_cast<unsigned>(rows), threads, smem, stream>>>(
          lv, sh, loc.data_ptr<acc_t>(), wts.data_ptr<acc_t>(),
          reinterpret_cast<store_t*>(out.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

// Returns {grad_loc, grad_wts, grad_feat_0, ..., grad_feat_{L-1}} (feature grads only when
// feat_grad; in the features' dtype, accumulated in fp32 / fp64 buffers).
std::vector<at::Tensor> msmv_backward_launch(const std::vector<at::Tensor>& feats, const at::Tensor& loc,
                                             const at::Tensor& wts, const at::Tensor& grad_out,
                                             bool feat_grad) {
  const c10::cuda::CUDAGuard guard(feats[0].device());
  const auto& f0 = feats[0];
  const auto acc_type = f0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // The kernel writes every element of these when it runs; zeros cover the empty cases.
  const bool launch = grad_out.numel() > 0;
  auto grad_loc = launch ? at::empty_like(loc) : at::zeros_like(loc);
  auto grad_wts = launch ? at::empty_like(wts) : at::zeros_like(wts);
  std::vector<at::Tensor> grad_feats;
  if (feat_grad) {
    for (const auto& f : feats) grad_feats.push_back(at::zeros(f.sizes(), f.options().dtype(acc_type)));
  }
  const int64_t rows = loc.size(0) * loc.size(1);
  if (launch) {
    TORCH_CHECK(rows <= INT32_MAX, "msmv_sampling: BB * Q = ", rows, " exceeds the grid limit 2^31-1");
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, f0.scalar_type(),
                                    "msmv_backward", [&] {
      using store_t = typename Traits<scalar_t>::store_t;
      using acc_t = typename Traits<scalar_t>::acc_t;
      const int V = pick_vector_width<scalar_t>(feats, static_cast<int>(f0.size(4)));
      const LaunchShape sh = make_shape(feats, loc, V, sizeof(acc_t));
      const auto lv = make_levels<store_t, acc_t>(feats, grad_feats);
      const int threads = 32 * std::min(kMaxWarps, sh.PT);
      const size_t smem = static_cast<size_t>(sh.C) * (sh.PT + 1) * sizeof(acc_t);
      dispatch_vector_width<scalar_t>(V, [&](auto vw) {
        constexpr int kV = decltype(vw)::value;
        msmv_backward_kernel<scalar_t, kV><<<static_cast<unsigned>(rows), threads, smem, stream>>>(
            lv, sh, loc.data_ptr<acc_t>(), wts.data_ptr<acc_t>(),
            reinterpret_cast<const store_t*>(grad_out.data_ptr()), grad_loc.data_ptr<acc_t>(),
            grad_wts.data_ptr<acc_t>(), feat_grad);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  std::vector<at::Tensor> result{grad_loc, grad_wts};
  for (auto& g : grad_feats) result.push_back(g.scalar_type() == f0.scalar_type() ? g : g.to(f0.scalar_type()));
  return result;
}

}  // namespace ops_csrc
