// Exact 1-nearest-neighbour search on CUDA for the head's point matching (spec 4.2, 11.20).
//
// Brute force over every (query, reference) pair, squared L2 distance rounded exactly as the
// PyTorch path in models/knn.py forms it, ((dx*dx + dy*dy) + dz*dz) with each product and sum
// rounded to fp32 (no FMA contraction), so both paths pick the same neighbour; ties go to the
// lowest reference index.
//
// Layout: a block holds kThreads x kQueriesPerThread queries in registers and scans one slice
// ("split") of the reference set, tile by tile through shared memory (every thread reads the same
// reference: a broadcast). Splits are there to fill the GPU when there are few queries; each block
// folds its per-query result into a global 64-bit key (distance bits << 32 | index) with atomicMin.
// For non-negative floats the bit pattern orders like the value, so the minimum key is the smallest
// distance and, among equal distances, the lowest index.
//
// A uniform grid ("knn1_grid_launch") answers the same question exactly for large sets: the
// references are sorted into cubic cells (about two a cell), and each query visits the cells in
// rings of growing Chebyshev radius around its own cell until no unvisited cell can hold a point
// as near as the best found. Every candidate's distance is the same fp32 expression and the same
// 64-bit key, and the stopping bound is strict with a margin for fp32 rounding (below), so the
// result is the brute force's, bit for bit, ties included.
#include <ATen/ATen.h>
#include <ATen/ops/searchsorted.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace ops_csrc {

namespace {

constexpr int kThreads = 256;
constexpr int kQueriesPerThread = 4;
constexpr int kTile = 1024;  // references per shared-memory tile (16 KB as float4)

// IEEE fp32 arithmetic written out in PTX: the extension is built with --use_fast_math, which
// would flush denormals (.ftz) and could fuse the products into FMAs; neither happens in PyTorch's
// eager ops that models/knn.py uses.
__device__ __forceinline__ float sub_rn(float a, float b) {
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float mul_rn(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float add_rn(float a, float b) {
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// Bit pattern of a distance: for the non-negative values here (sums of squares, +inf, NaN) it
// orders like the value, exactly, denormals included; NaN sorts above +inf.
__device__ __forceinline__ unsigned squared_distance_bits(float qx, float qy, float qz, const float4 r) {
  const float dx = sub_rn(qx, r.x), dy = sub_rn(qy, r.y), dz = sub_rn(qz, r.z);
  return __float_as_uint(add_rn(add_rn(mul_rn(dx, dx), mul_rn(dy, dy)), mul_rn(dz, dz)));
}

// query [M, 3], ref [K, 3] fp32 contiguous; best [M] keys, initialised to all ones.
__global__ void __launch_bounds__(kThreads)
knn1_kernel(const float* __restrict__ query, const float* __restrict__ ref, const int M, const int K,
            const int refs_per_split, unsigned long long* __restrict__ best) {
  __shared__ float4 tile[kTile];
  const int r_begin = blockIdx.y * refs_per_split;
  const int r_end = min(K, r_begin + refs_per_split);
  if (r_begin >= r_end) return;  // whole block: no barrier is skipped by only some threads

  const int64_t q_base = static_cast<int64_t>(blockIdx.x) * (kThreads * kQueriesPerThread) + threadIdx.x;
  float qx[kQueriesPerThread], qy[kQueriesPerThread], qz[kQueriesPerThread];
  unsigned bd[kQueriesPerThread];  // best distance, as bits
  int bi[kQueriesPerThread];
#pragma unroll
  for (int j = 0; j < kQueriesPerThread; ++j) {
    const int64_t q = q_base + j * kThreads;
    const bool valid = q < M;
    qx[j] = valid ? query[3 * q] : 0.f;
    qy[j] = valid ? query[3 * q + 1] : 0.f;
    qz[j] = valid ? query[3 * q + 2] : 0.f;
    // Starting from (+inf, first index) keeps the "lowest index" rule when every distance is
    // infinite; NaN distances never compare smaller and are therefore never chosen.
    bd[j] = 0x7f800000u;
    bi[j] = r_begin;
  }

  for (int t0 = r_begin; t0 < r_end; t0 += kTile) {
    const int n = min(kTile, r_end - t0);
    __syncthreads();  // the previous tile is no longer read
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const int64_t r = static_cast<int64_t>(t0) + i;
      tile[i] = make_float4(ref[3 * r], ref[3 * r + 1], ref[3 * r + 2], 0.f);
    }
    __syncthreads();
#pragma unroll 4
    for (int i = 0; i < n; ++i) {
      const float4 r = tile[i];
#pragma unroll
      for (int j = 0; j < kQueriesPerThread; ++j) {
        const unsigned d = squared_distance_bits(qx[j], qy[j], qz[j], r);
        // Strict '<' in increasing index order: the first of equal distances is kept.
        if (d < bd[j]) {
          bd[j] = d;
          bi[j] = t0 + i;
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kQueriesPerThread; ++j) {
    const int64_t q = q_base + j * kThreads;
    if (q < M) {
      const unsigned long long key =
          (static_cast<unsigned long long>(bd[j]) << 32) | static_cast<unsigned>(bi[j]);
      atomicMin(best + q, key);
    }
  }
}

// ---- Uniform grid -------------------------------------------------------------------------------
// Symbols: K references, M queries; G the grid's cells (dims[0] x dims[1] x dims[2], x fastest),
// h the cell edge (same unit as the points), lo the grid's corner (the finite references' minimum).
// Cell coordinates are computed in float64 from the fp32 points, so a point's cell and the cell
// faces below agree to float64 rounding; the fp32 distances are the brute force's.

struct GridParams {
  double lo[3];
  double h, inv_h;
  int dims[3];
};

constexpr int kGridThreads = 256;
constexpr int kMaxCellsPerAxis = 1 << 20;

// One thread: the grid from the finite references' bounding box bbox = [lo xyz, hi xyz] (lo > hi
// when no reference is finite). About `target_cells` cubic cells, never more than `capacity`.
__global__ void grid_params_kernel(const float* __restrict__ bbox, const int64_t target_cells,
                                   const int64_t capacity, GridParams* __restrict__ p) {
  double ext[3], longest = 0.0;
  bool empty = false;
  for (int a = 0; a < 3; ++a) {
    p->lo[a] = bbox[a];
    ext[a] = static_cast<double>(bbox[3 + a]) - static_cast<double>(bbox[a]);
    empty |= !(ext[a] >= 0.0);
    longest = fmax(longest, ext[a]);
  }
  if (empty || !(longest > 0.0) || !isfinite(longest)) {  // no finite reference, or all at one point
    for (int a = 0; a < 3; ++a) {
      p->lo[a] = empty ? 0.0 : p->lo[a];
      p->dims[a] = 1;
    }
    p->h = 1.0;
    p->inv_h = 1.0;
    return;
  }
  // Thin axes count as 1/1024 of the longest one, so that the volume (and h) stays positive.
  double volume = 1.0;
  for (int a = 0; a < 3; ++a) volume *= fmax(ext[a], longest / 1024.0);
  double h = cbrt(volume / static_cast<double>(target_cells));
  for (;;) {
    int64_t cells = 1;
    bool fits = true;
    for (int a = 0; a < 3; ++a) {
      const double n = floor(ext[a] / h) + 1.0;  // the cell of the largest coordinate included
      fits &= n <= kMaxCellsPerAxis;
      p->dims[a] = fits ? static_cast<int>(n) : 1;
      cells *= p->dims[a];
    }
    if (fits && cells <= capacity) break;
    h *= 1.25;
  }
  p->h = h;
  p->inv_h = 1.0 / h;
}

// Cell coordinate of one fp32 coordinate along axis a, clamped into the grid (NaN -> 0).
__device__ __forceinline__ int cell_coord(const GridParams& p, const int a, const float x) {
  const double t = floor((static_cast<double>(x) - p.lo[a]) * p.inv_h);
  return static_cast<int>(fmin(fmax(t, 0.0), static_cast<double>(p.dims[a] - 1)));
}

// ref [K, 3] -> cell [K] (int32, linear, x fastest).
__global__ void ref_cells_kernel(const float* __restrict__ ref, const int K, const GridParams* __restrict__ params,
                                 int* __restrict__ cell) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  const GridParams p = *params;
  const int cx = cell_coord(p, 0, ref[3 * static_cast<int64_t>(k)]);
  const int cy = cell_coord(p, 1, ref[3 * static_cast<int64_t>(k) + 1]);
  const int cz = cell_coord(p, 2, ref[3 * static_cast<int64_t>(k) + 2]);
  cell[k] = (cz * p.dims[1] + cy) * p.dims[0] + cx;
}

// ref [K, 3] in cell order (perm [K]) -> sorted [K] float4 (w unused), index [K] int32.
__global__ void gather_refs_kernel(const float* __restrict__ ref, const int64_t* __restrict__ perm, const int K,
                                   float4* __restrict__ sorted, int* __restrict__ index) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  const int64_t r = perm[k];
  sorted[k] = make_float4(ref[3 * r], ref[3 * r + 1], ref[3 * r + 2], 0.f);
  index[k] = static_cast<int>(r);
}

// Folds the references of cell (x, y, z) into `best` (the brute force's key: fp32 distance bits,
// non-finite ones as +inf, << 32 | reference index; the minimum is the lowest index among the nearest).
__device__ __forceinline__ void visit_cell(const GridParams& p, const int x, const int y, const int z,
                                           const int* __restrict__ start, const float4* __restrict__ sorted,
                                           const int* __restrict__ index, const float qx, const float qy,
                                           const float qz, unsigned long long& best) {
  const int c = (z * p.dims[1] + y) * p.dims[0] + x;
  const int end = start[c + 1];
  for (int i = start[c]; i < end; ++i) {
    const unsigned d = min(squared_distance_bits(qx, qy, qz, sorted[i]), 0x7f800000u);
    const unsigned long long key = (static_cast<unsigned long long>(d) << 32) | static_cast<unsigned>(index[i]);
    best = key < best ? key : best;
  }
}

// query [M, 3] -> out [M] int64. One thread per query; rings r = 0, 1, ... of cells at Chebyshev
// distance r from the query's cell (clipped to the grid). After ring r every unvisited reference
// lies beyond a face of the visited block, so its true distance is at least lb, the distance from
// the query to the nearest such face. Its fp32 distance is at least lb^2 (1 - 6 eps32) - 2^-146
// (three roundings of the differences, three of the squares and sums, relative eps32 = 2^-24 each;
// 2^-146 bounds the absolute error of denormal results): when that exceeds the best fp32 distance,
// no unvisited reference can be nearer or equally near, and the search stops. lb is taken 1e-9
// relative below the float64 face distance, far beyond float64's rounding of the cell coordinates.
// Non-finite queries never stop early: they visit every cell, as the brute force visits every pair.
__global__ void __launch_bounds__(kGridThreads)
knn1_grid_kernel(const float* __restrict__ query, const int M, const GridParams* __restrict__ params,
                 const int* __restrict__ start, const float4* __restrict__ sorted, const int* __restrict__ index,
                 int64_t* __restrict__ out) {
  const int m = blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= M) return;
  const GridParams p = *params;
  const float q[3] = {query[3 * static_cast<int64_t>(m)], query[3 * static_cast<int64_t>(m) + 1],
                      query[3 * static_cast<int64_t>(m) + 2]};
  const bool finite = isfinite(q[0]) && isfinite(q[1]) && isfinite(q[2]);
  int c[3];
  for (int a = 0; a < 3; ++a) c[a] = cell_coord(p, a, q[a]);
  unsigned long long best = ~0ull;
  for (int r = 0;; ++r) {
    const int z0 = max(c[2] - r, 0), z1 = min(c[2] + r, p.dims[2] - 1);
    const int y0 = max(c[1] - r, 0), y1 = min(c[1] + r, p.dims[1] - 1);
    const int x0 = max(c[0] - r, 0), x1 = min(c[0] + r, p.dims[0] - 1);
    for (int z = z0; z <= z1; ++z) {
      for (int y = y0; y <= y1; ++y) {
        if (abs(z - c[2]) == r || abs(y - c[1]) == r) {  // a face of the ring: the whole row
          for (int x = x0; x <= x1; ++x) visit_cell(p, x, y, z, start, sorted, index, q[0], q[1], q[2], best);
        } else {  // inside the ring's faces: its two ends only
          if (c[0] - r >= 0) visit_cell(p, c[0] - r, y, z, start, sorted, index, q[0], q[1], q[2], best);
          if (r > 0 && c[0] + r < p.dims[0])
            visit_cell(p, c[0] + r, y, z, start, sorted, index, q[0], q[1], q[2], best);
        }
      }
    }
    // The nearest face with unvisited cells beyond it.
    double lb = INFINITY;
    bool unvisited = false;
    for (int a = 0; a < 3; ++a) {
      const double x = q[a], slack = 1e-9 * (fabs(x) + fabs(p.lo[a]) + p.h * p.dims[a]);
      if (c[a] - r > 0) {
        unvisited = true;
        lb = fmin(lb, x - (p.lo[a] + (c[a] - r) * p.h) - slack);
      }
      if (c[a] + r < p.dims[a] - 1) {
        unvisited = true;
        lb = fmin(lb, (p.lo[a] + (c[a] + r + 1) * p.h) - x - slack);
      }
    }
    if (!unvisited) break;
    const float best_d = __uint_as_float(static_cast<unsigned>(best >> 32));  // NaN while nothing was found
    if (finite && lb > 0.0 && lb * lb * (1.0 - 1e-6) > static_cast<double>(best_d) + 1e-43) break;
  }
  out[m] = static_cast<int64_t>(best & 0xffffffffull);
}

}  // namespace

// query [M, 3], ref [K, 3]: fp32, contiguous, same CUDA device, K >= 1 (checked by the caller).
// Returns int64 [M]: index of the nearest reference of each query.
at::Tensor knn1_launch(const at::Tensor& query, const at::Tensor& ref) {
  const c10::cuda::CUDAGuard guard(query.device());
  const int64_t M = query.size(0), K = ref.size(0);
  // All ones = the largest key; every query is then lowered at least by the split holding index 0.
  auto keys = at::full({M}, -1, query.options().dtype(at::kLong));
  if (M == 0) return keys;
  TORCH_CHECK(M <= INT32_MAX && K <= INT32_MAX, "knn1_cuda: at most 2^31-1 queries and references, got ",
              M, " and ", K);

  const int64_t per_block = kThreads * kQueriesPerThread;
  const int64_t q_blocks = (M + per_block - 1) / per_block;
  TORCH_CHECK(q_blocks <= INT32_MAX, "knn1_cuda: too many queries");
  int resident = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, knn1_kernel, kThreads, 0));
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, query.get_device()));
  // As many reference splits as keep one full wave of blocks busy, none smaller than a tile.
  int64_t splits = std::max<int64_t>(1, (static_cast<int64_t>(sms) * std::max(resident, 1)) / q_blocks);
  splits = std::min<int64_t>({splits, (K + kTile - 1) / kTile, 65535});
  const int64_t refs_per_split = (K + splits - 1) / splits;
  splits = (K + refs_per_split - 1) / refs_per_split;

  const dim3 grid(static_cast<unsigned>(q_blocks), static_cast<unsigned>(splits));
  knn1_kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      query.data_ptr<float>(), ref.data_ptr<float>(), static_cast<int>(M), static_cast<int>(K),
      static_cast<int>(refs_per_split), reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keys.bitwise_and(0xffffffffLL);
}

// query [M, 3], ref [K, 3]: fp32, contiguous, same CUDA device, K >= 1 (checked by the caller).
// The uniform-grid search; returns what knn1_launch returns, without reading anything back to the host.
at::Tensor knn1_grid_launch(const at::Tensor& query, const at::Tensor& ref) {
  const c10::cuda::CUDAGuard guard(query.device());
  const int64_t M = query.size(0), K = ref.size(0);
  auto out = at::empty({M}, query.options().dtype(at::kLong));
  if (M == 0) return out;
  TORCH_CHECK(M <= INT32_MAX && K <= INT32_MAX / 4, "knn1_grid: at most 2^31-1 queries and 2^29-1 references, "
              "got ", M, " and ", K);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // the finite references' bounding box, [lo xyz, hi xyz]
  const auto finite = at::isfinite(ref).all(1, /*keepdim=*/true);
  const auto inf = std::numeric_limits<float>::infinity();
  const auto bbox = at::cat({at::where(finite, ref, inf).amin(0), at::where(finite, ref, -inf).amax(0)}).contiguous();
  const int64_t target_cells = std::max<int64_t>(1, K / 2);
  const int64_t capacity = 4 * target_cells + 64;
  auto params = at::empty({static_cast<int64_t>(sizeof(GridParams))}, query.options().dtype(at::kByte));
  auto* p = reinterpret_cast<GridParams*>(params.data_ptr<uint8_t>());
  grid_params_kernel<<<1, 1, 0, stream>>>(bbox.data_ptr<float>(), target_cells, capacity, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int ref_blocks = static_cast<int>((K + kGridThreads - 1) / kGridThreads);
  auto cell = at::empty({K}, query.options().dtype(at::kInt));
  ref_cells_kernel<<<ref_blocks, kGridThreads, 0, stream>>>(ref.data_ptr<float>(), static_cast<int>(K), p,
                                                            cell.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto sorted_cells = at::sort(cell);  // (cells, permutation); ties in any order: the key holds the index
  auto sorted = at::empty({K, 4}, ref.options());
  auto index = at::empty({K}, query.options().dtype(at::kInt));
  gather_refs_kernel<<<ref_blocks, kGridThreads, 0, stream>>>(
      ref.data_ptr<float>(), std::get<1>(sorted_cells).data_ptr<int64_t>(), static_cast<int>(K),
      reinterpret_cast<float4*>(sorted.data_ptr<float>()), index.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // start[c] = the first sorted reference of cell c; start[c + 1] - start[c] its count
  const auto start = at::searchsorted(std::get<0>(sorted_cells),
                                      at::arange(capacity + 1, query.options().dtype(at::kInt)),
                                      /*out_int32=*/true);

  knn1_grid_kernel<<<static_cast<int>((M + kGridThreads - 1) / kGridThreads), kGridThreads, 0, stream>>>(
      query.data_ptr<float>(), static_cast<int>(M), p, start.data_ptr<int>(),
      reinterpret_cast<const float4*>(sorted.data_ptr<float>()), index.data_ptr<int>(), out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace ops_csrc
