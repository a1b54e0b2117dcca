// 2-D Chamfer distance (Dense RepPoints' point-set loss, spec reppoints.md sections 3.4 and 6):
// CUDA forward and backward kernels.
//
// The ground truth is the PyTorch reference ``cuda_ops.chamfer_2d.chamfer_distance_reference``.
// For a [P, N, 2] and b [P, M, 2] (contiguous, one dtype T = float or double):
//
//   d(p, n, m)    = dx*dx + dy*dy,  dx = a[p,n,0] - b[p,m,0],  dy = a[p,n,1] - b[p,m,1]
//   dist_ab[p, n] = min_m d(p, n, m)   idx_ab[p, n] = its m     (a -> b)
//   dist_ba[p, m] = min_n d(p, n, m)   idx_ba[p, m] = its n     (b -> a)
//
// d is rounded as written: every subtraction, product and the sum are rounded once (the _rn
// intrinsics, which nvcc never contracts into a fused multiply-add), exactly as the
// reference's separate tensor operations round them, so both find the same minima and the
// same indices. Selection rule (torch.argmin's): scanning m = 0, 1, ..., a candidate replaces
// the running best when the best is not NaN and the candidate is NaN or strictly smaller; so
// among equal distances the lowest index wins and the first NaN wins over everything.
//
// Forward: one thread per query point (a point of a for a -> b; the same kernel with the
// roles swapped for b -> a). A block holds kThreads consecutive query points of one instance
// and walks the other set in tiles of kThreads points staged in shared memory. Any N and M
// work (the bounds are checked; the RPv2 kernel gave NaN below 441 points,
// Dense-RepPoints#4).
//
// Backward, from the saved indices (g_ab = d loss / d dist_ab, g_ba = d loss / d dist_ba):
//
//   grad_a[p, n] = 2 (a_n - b_{idx_ab[n]}) g_ab[n] + sum_{m : idx_ba[m] == n} 2 (a_n - b_m) g_ba[m]
//   grad_b[p, m] = 2 (b_m - a_{idx_ba[m]}) g_ba[m] + sum_{n : idx_ab[n] == m} 2 (b_m - a_n) g_ab[n]
//
// (per coordinate). One thread owns one output point: it adds its own term to the sum, taken
// in increasing index order, of the terms of the points of the other set matched to it, which
// it finds by scanning that set's indices tile by tile. No atomics: deterministic, each
// element written once; O(N M) index comparisons per instance, like the forward.

// Only c10's CUDA headers: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers, which a
// minimal CUDA toolkit (nvcc + runtime) lacks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace detlab {
namespace {

constexpr int kThreads = 256;            // threads per block = query points per block = tile size
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

inline int blocks_for(int64_t work_items) {
  return static_cast<int>(std::max<int64_t>(1, std::min(work_items, kMaxBlocks)));
}

// Arithmetic rounded once per operation and never fused.
__device__ __forceinline__ float sub_rn(float x, float y) { return __fsub_rn(x, y); }
__device__ __forceinline__ float mul_rn(float x, float y) { return __fmul_rn(x, y); }
__device__ __forceinline__ float add_rn(float x, float y) { return __fadd_rn(x, y); }
__device__ __forceinline__ double sub_rn(double x, double y) { return __dsub_rn(x, y); }
__device__ __forceinline__ double mul_rn(double x, double y) { return __dmul_rn(x, y); }
__device__ __forceinline__ double add_rn(double x, double y) { return __dadd_rn(x, y); }

template <typename T>
__device__ __forceinline__ T sq_dist(T qx, T qy, T rx, T ry) {
  const T dx = sub_rn(qx, rx);
  const T dy = sub_rn(qy, ry);
  return add_rn(mul_rn(dx, dx), mul_rn(dy, dy));
}

// 2 (q - r) g for one coordinate (the scaling by 2 is exact, so the order does not matter)
template <typename T>
__device__ __forceinline__ T pair_grad(T q, T r, T g) {
  return mul_rn(mul_rn(sub_rn(q, r), g), T(2));
}

// For each query point q[p, i] (nq per instance) the nearest point of r[p] (nr per instance):
// dist[p, i], idx[p, i]. Work item w = (instance p, chunk of kThreads query points).
template <typename T>
__global__ void nearest_kernel(int64_t P, int64_t nq, int64_t nr, const T* __restrict__ q,
                               const T* __restrict__ r, T* __restrict__ dist,
                               int64_t* __restrict__ idx) {
  __shared__ T tile[2 * kThreads];
  const int64_t chunks = (nq + kThreads - 1) / kThreads;
  for (int64_t w = blockIdx.x; w < P * chunks; w += gridDim.x) {  // uniform per block
    const int64_t p = w / chunks;
    const int64_t i = (w % chunks) * kThreads + threadIdx.x;
    const bool active = i < nq;
    const T* rp = r + p * nr * 2;
    T qx = T(0), qy = T(0);
    if (active) {
      qx = q[(p * nq + i) * 2];
      qy = q[(p * nq + i) * 2 + 1];
    }
    T best = T(0);
    int64_t arg = -1;
    for (int64_t s = 0; s < nr; s += kThreads) {
      const int cnt = nr - s < kThreads ? static_cast<int>(nr - s) : kThreads;
      __syncthreads();  // the previous tile is consumed
      for (int k = threadIdx.x; k < 2 * cnt; k += blockDim.x) tile[k] = rp[s * 2 + k];
      __syncthreads();
      if (active) {
        for (int k = 0; k < cnt; ++k) {
          const T d = sq_dist(qx, qy, tile[2 * k], tile[2 * k + 1]);
          const bool best_nan = best != best;
          if (arg < 0 || (!best_nan && (d != d || d < best))) {
            best = d;
            arg = s + k;
          }
        }
      }
    }
    if (active) {
      dist[p * nq + i] = best;
      idx[p * nq + i] = arg;
    }
  }
}

// Gradient w.r.t. the points q[p, i] (nq per instance) of the pairs q -> r (idx_qr, g_qr, one
// per q point) and r -> q (idx_rq, g_rq, one per r point); see the top of the file.
template <typename T>
__global__ void grad_kernel(int64_t P, int64_t nq, int64_t nr, const T* __restrict__ q,
                            const T* __restrict__ r, const int64_t* __restrict__ idx_qr,
                            const T* __restrict__ g_qr, const int64_t* __restrict__ idx_rq,
                            const T* __restrict__ g_rq, T* __restrict__ grad_q) {
  __shared__ T tile_pts[2 * kThreads];
  __shared__ T tile_g[kThreads];
  __shared__ int64_t tile_idx[kThreads];
  const int64_t chunks = (nq + kThreads - 1) / kThreads;
  for (int64_t w = blockIdx.x; w < P * chunks; w += gridDim.x) {  // uniform per block
    const int64_t p = w / chunks;
    const int64_t i = (w % chunks) * kThreads + threadIdx.x;
    const bool active = i < nq;
    const T* rp = r + p * nr * 2;
    T qx = T(0), qy = T(0), sx = T(0), sy = T(0);
    if (active) {
      qx = q[(p * nq + i) * 2];
      qy = q[(p * nq + i) * 2 + 1];
    }
    for (int64_t s = 0; s < nr; s += kThreads) {
      const int cnt = nr - s < kThreads ? static_cast<int>(nr - s) : kThreads;
      __syncthreads();  // the previous tile is consumed
      for (int k = threadIdx.x; k < 2 * cnt; k += blockDim.x) tile_pts[k] = rp[s * 2 + k];
      if (threadIdx.x < cnt) {
        tile_idx[threadIdx.x] = idx_rq[p * nr + s + threadIdx.x];
        tile_g[threadIdx.x] = g_rq[p * nr + s + threadIdx.x];
      }
      __syncthreads();
      if (active) {
        for (int k = 0; k < cnt; ++k) {
          if (tile_idx[k] == i) {
            sx = add_rn(sx, pair_grad(qx, tile_pts[2 * k], tile_g[k]));
            sy = add_rn(sy, pair_grad(qy, tile_pts[2 * k + 1], tile_g[k]));
          }
        }
      }
    }
    if (active) {
      const int64_t j = idx_qr[p * nq + i];
      const T g = g_qr[p * nq + i];
      grad_q[(p * nq + i) * 2] = add_rn(pair_grad(qx, rp[j * 2], g), sx);
      grad_q[(p * nq + i) * 2 + 1] = add_rn(pair_grad(qy, rp[j * 2 + 1], g), sy);
    }
  }
}

inline int64_t work_items(int64_t P, int64_t nq) { return P * ((nq + kThreads - 1) / kThreads); }

}  // namespace

// Launchers (declared in chamfer_2d.cpp, which checks the arguments: contiguous tensors of
// one dtype on one CUDA device, shapes as documented there).

void chamfer_2d_forward_cuda(const at::Tensor& a, const at::Tensor& b, at::Tensor& dist_ab,
                             at::Tensor& dist_ba, at::Tensor& idx_ab, at::Tensor& idx_ba) {
  const int64_t P = a.size(0), N = a.size(1), M = b.size(1);
  if (P == 0 || N == 0 || M == 0) return;
  const c10::cuda::CUDAGuard guard(a.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chamfer_2d_forward_cuda", [&] {
    nearest_kernel<scalar_t><<<blocks_for(work_items(P, N)), kThreads, 0, stream>>>(
        P, N, M, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), dist_ab.data_ptr<scalar_t>(),
        idx_ab.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    nearest_kernel<scalar_t><<<blocks_for(work_items(P, M)), kThreads, 0, stream>>>(
        P, M, N, b.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), dist_ba.data_ptr<scalar_t>(),
        idx_ba.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void chamfer_2d_backward_cuda(const at::Tensor& a, const at::Tensor& b,
                              const at::Tensor& idx_ab, const at::Tensor& idx_ba,
                              const at::Tensor& grad_ab, const at::Tensor& grad_ba,
                              at::Tensor& grad_a, at::Tensor& grad_b) {
  const int64_t P = a.size(0), N = a.size(1), M = b.size(1);
  if (P == 0 || N == 0 || M == 0) return;
  const c10::cuda::CUDAGuard guard(a.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chamfer_2d_backward_cuda", [&] {
    grad_kernel<scalar_t><<<blocks_for(work_items(P, N)), kThreads, 0, stream>>>(
        P, N, M, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), idx_ab.data_ptr<int64_t>(),
        grad_ab.data_ptr<scalar_t>(), idx_ba.data_ptr<int64_t>(), grad_ba.data_ptr<scalar_t>(),
        grad_a.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_kernel<scalar_t><<<blocks_for(work_items(P, M)), kThreads, 0, stream>>>(
        P, M, N, b.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), idx_ba.data_ptr<int64_t>(),
        grad_ba.data_ptr<scalar_t>(), idx_ab.data_ptr<int64_t>(), grad_ab.data_ptr<scalar_t>(),
        grad_b.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace detlab
