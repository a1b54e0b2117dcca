// Corner pooling (CornerNet's TopPool / BottomPool / LeftPool / RightPool, as RepPoints V2's
// TLPool = top + left and BRPool = bottom + right use them; spec reppoints.md section 2.1):
// CUDA forward and backward kernels.
//
// The ground truth is the PyTorch reference ``cuda_ops.corner_pool.corner_pool_reference``
// (``torch.cummax`` on flipped tensors). For input x [B, C, H, W] (contiguous, one dtype T =
// float, double, half or bfloat16) the output has x's shape and
//
//   top     out[b, c, i, w] = max_{j >= i} x[b, c, j, w]   (scan the rows from H-1 down to 0)
//   bottom  out[b, c, i, w] = max_{j <= i} x[b, c, j, w]   (scan the rows from 0 up to H-1)
//   left    out[b, c, h, i] = max_{j >= i} x[b, c, h, j]   (scan the columns from W-1 down)
//   right   out[b, c, h, i] = max_{j <= i} x[b, c, h, j]   (scan the columns from 0 up)
//
// Every kernel thread owns one scan line (one (b, c, w) column for top/bottom, one (b, c, h)
// row for left/right) and walks it in the scan direction keeping the running max m and its
// position a. The update rule is torch.cummax's: the element v at the current position takes
// over when ``isnan(v) || (!isnan(m) && v >= m)``. So among tied maxima the one scanned last,
// i.e. the one nearest to the output position, is the argmax, and a NaN propagates to every
// later position (the last NaN seen is the argmax).
//
// Backward: d x[k] = sum of d out[i] over the positions i whose argmax is k. The thread that
// owns the line rescans x with the same rule and sums d out over each run of positions sharing
// an argmax (in the scan order, in float for half/bfloat16), writing the sum to the argmax
// when the run ends and 0 to every position that never becomes an argmax. A line is written
// only by its thread: no atomics, deterministic, every element written exactly once.
//
// Memory access: the top/bottom threads of a warp read adjacent columns (coalesced); the
// left/right threads read rows W elements apart, each walking its own row.

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

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

// Direction codes, shared with corner_pool.cpp.
constexpr int64_t kTop = 0;
constexpr int64_t kBottom = 1;
constexpr int64_t kLeft = 2;
constexpr int64_t kRight = 3;

inline int blocks_for(int64_t work_items) {
  const int64_t b = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(b, kMaxBlocks)));
}

// Arithmetic type: float for the 16-bit types (the max itself is exact in any of them).
template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};

// torch.cummax's rule: does v replace the running max m?
template <typename A>
__device__ __forceinline__ bool takes_over(A v, A m) {
  const bool v_nan = v != v;
  const bool m_nan = m != m;
  return v_nan || (!m_nan && v >= m);
}

// The scan lines of a [B, C, H, W] tensor: ``lines`` lines of ``n`` elements ``inner`` apart;
// line l starts at (l / inner) * n * inner + l % inner (its first element in memory order).
struct Lines {
  int64_t lines;
  int64_t n;
  int64_t inner;
  bool reverse;  // scan from the line's last element to its first (top, left)
};

inline Lines lines_of(const at::Tensor& x, int64_t direction) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Lines g;
  if (direction == kTop || direction == kBottom) {
    g.lines = B * C * W;
    g.n = H;
    g.inner = W;
  } else {
    g.lines = B * C * H;
    g.n = W;
    g.inner = 1;
  }
  g.reverse = direction == kTop || direction == kLeft;
  return g;
}

template <typename T>
__global__ void forward_kernel(int64_t lines, int64_t n, int64_t inner, bool reverse,
                               const T* __restrict__ input, T* __restrict__ out) {
  using A = typename AccType<T>::type;
  const int64_t step = reverse ? -inner : inner;
  for (int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; l < lines;
       l += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t off = (l / inner) * n * inner + l % inner + (reverse ? (n - 1) * inner : 0);
    A m = static_cast<A>(input[off]);
    out[off] = input[off];
    for (int64_t k = 1; k < n; ++k) {
      off += step;
      const A v = static_cast<A>(input[off]);
      if (takes_over(v, m)) m = v;
      out[off] = static_cast<T>(m);
    }
  }
}

template <typename T>
__global__ void backward_kernel(int64_t lines, int64_t n, int64_t inner, bool reverse,
                                const T* __restrict__ input, const T* __restrict__ grad_out,
                                T* __restrict__ grad_input) {
  using A = typename AccType<T>::type;
  const int64_t step = reverse ? -inner : inner;
  for (int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; l < lines;
       l += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t off = (l / inner) * n * inner + l % inner + (reverse ? (n - 1) * inner : 0);
    A m = static_cast<A>(input[off]);
    int64_t arg = off;                          // position of the running max
    A acc = static_cast<A>(grad_out[off]);      // d out summed over the current run
    for (int64_t k = 1; k < n; ++k) {
      off += step;
      const A v = static_cast<A>(input[off]);
      if (takes_over(v, m)) {
        grad_input[arg] = static_cast<T>(acc);  // the run of the previous argmax ends
        m = v;
        arg = off;
        acc = A(0);
      } else {
        grad_input[off] = static_cast<T>(A(0));  // never an argmax: becomes one only here
      }
      acc += static_cast<A>(grad_out[off]);
    }
    grad_input[arg] = static_cast<T>(acc);
  }
}

}  // namespace

// Launchers (declared in corner_pool.cpp, which checks the arguments: contiguous 4-D tensors of
// one dtype on one CUDA device, direction one of the codes above).

void corner_pool_forward_cuda(const at::Tensor& input, at::Tensor& out, int64_t direction) {
  if (input.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(input.device());
  const Lines g = lines_of(input, direction);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16,
                                  input.scalar_type(), "corner_pool_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(g.lines), kThreads, 0, stream>>>(
        g.lines, g.n, g.inner, g.reverse, input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void corner_pool_backward_cuda(const at::Tensor& input, const at::Tensor& grad_out,
                               at::Tensor& grad_input, int64_t direction) {
  if (input.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(input.device());
  const Lines g = lines_of(input, direction);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16,
                                  input.scalar_type(), "corner_pool_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(g.lines), kThreads, 0, stream>>>(
        g.lines, g.n, g.inner, g.reverse, input.data_ptr<scalar_t>(),
        grad_out.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace detlab
