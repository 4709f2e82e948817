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
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

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

}  // namespace ops_csrc
