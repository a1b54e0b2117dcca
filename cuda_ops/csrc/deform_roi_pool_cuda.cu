// Deformable RoI pooling (mmdet v1 ``deform_psroi_pooling`` with group_size=1, i.e. not
// position-sensitive; spec d2det.md section 2.2): CUDA forward and backward kernels.
//
// The ground truth is the PyTorch reference ``cuda_ops.deform_roi_pool.deform_roi_pool_reference``;
// every coordinate below is computed with the same operations in the same order, in the
// features' dtype, so that sample validity, floor/ceil corners and the bin -> part mapping agree
// with it (values agree to rounding).
//
// Shapes (all tensors contiguous, on one device, one dtype T = float or double):
//   features   [B, C, H, W]
//   rois       [N, 5]        rows (batch_idx, x1, y1, x2, y2), input-image pixels
//   offsets    [N, 2, Q, Q]  normalised offsets (channel 0: x, 1: y), or absent (no_trans)
//   out        [N, C, P, P]  pooled features
//   count      [N, P, P]     number of valid samples of each bin (T-valued, 0..S*S)
//
// Kernels:
//   forward            one thread per output element (n, c, ph, pw);
//   backward_features  one thread per output element, atomicAdd of the bilinear weights / count
//                      times the output gradient into the four corners of every valid sample;
//   backward_offsets   one warp per bin (n, ph, pw), lanes stride over the channels and sum
//                      grad_out * (bilinear x- / y-derivative) over channels and samples; lane 0
//                      adds the bin's total * trans_std * roi_w / count (resp. roi_h) to the
//                      bin's offset part with atomicAdd (bins sharing a part sum there).
// No gradient flows to the RoIs. A RoI whose batch index is outside [0, B) pools to 0 and gets
// no gradient (the reference raises an index error instead; the kernel must not read out of
// bounds).

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
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

inline int blocks_for(int64_t work_items) {
  const int64_t b = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(b, kMaxBlocks)));
}

// C ``round`` as the reference computes it: sign(x) * floor(|x| + 0.5).
template <typename T>
__device__ __forceinline__ T round_half_away(T x) {
  const T r = floor(fabs(x) + T(0.5));
  return x > T(0) ? r : (x < T(0) ? -r : T(0));
}

// Offset part of bin ``p``: floor(p / P * Q) computed in T, at most Q - 1.
template <typename T>
__device__ __forceinline__ int64_t part_index(int p, int P, int Q) {
  const int64_t part = static_cast<int64_t>(floor(T(p) / T(P) * T(Q)));
  return part < Q - 1 ? part : static_cast<int64_t>(Q - 1);
}

// Per-bin sampling geometry, feature-map pixels.
template <typename T>
struct BinGeometry {
  int64_t batch;   // image index, -1 when out of range
  T wstart;        // first sample's x (bin's left edge plus the offset)
  T hstart;        // first sample's y
  T sub_w;         // spacing of the samples along x
  T sub_h;
  T roi_w;         // RoI width (>= 0.1), scales the x offset
  T roi_h;
  int64_t part_h;  // offset part of this bin
  int64_t part_w;
};

template <typename T>
__device__ __forceinline__ BinGeometry<T> bin_geometry(
    const T* __restrict__ rois, const T* __restrict__ offsets, int64_t n, int ph, int pw,
    int B, int P, int Q, int S, T scale, T trans_std) {
  const T* r = rois + n * 5;
  BinGeometry<T> g;
  const int64_t b = static_cast<int64_t>(r[0]);  // truncation, as Tensor.long()
  g.batch = (b >= 0 && b < B) ? b : -1;
  const T start_w = round_half_away(r[1]) * scale - T(0.5);
  const T start_h = round_half_away(r[2]) * scale - T(0.5);
  const T end_w = (round_half_away(r[3]) + T(1)) * scale - T(0.5);
  const T end_h = (round_half_away(r[4]) + T(1)) * scale - T(0.5);
  g.roi_w = max(end_w - start_w, T(0.1));
  g.roi_h = max(end_h - start_h, T(0.1));
  const T bin_w = g.roi_w / T(P);
  const T bin_h = g.roi_h / T(P);
  g.sub_w = bin_w / T(S);
  g.sub_h = bin_h / T(S);
  g.wstart = T(pw) * bin_w + start_w;
  g.hstart = T(ph) * bin_h + start_h;
  g.part_h = part_index<T>(ph, P, Q);
  g.part_w = part_index<T>(pw, P, Q);
  if (offsets != nullptr) {
    const T* o = offsets + n * 2 * Q * Q;
    const T tx = o[g.part_h * Q + g.part_w] * trans_std;
    const T ty = o[Q * Q + g.part_h * Q + g.part_w] * trans_std;
    g.wstart = g.wstart + tx * g.roi_w;
    g.hstart = g.hstart + ty * g.roi_h;
  }
  return g;
}

// A sample (w, h) inside [-0.5, W-0.5] x [-0.5, H-0.5], clamped to the map, with its
// floor/ceil corners and fractional distances.
template <typename T>
struct Sample {
  int64_t x0, x1, y0, y1;
  T dx, dy;
};

template <typename T>
__device__ __forceinline__ bool make_sample(T w, T h, int H, int W, Sample<T>* s) {
  if (w < T(-0.5) || w > T(W) - T(0.5) || h < T(-0.5) || h > T(H) - T(0.5)) return false;
  w = min(max(w, T(0)), T(W - 1));
  h = min(max(h, T(0)), T(H - 1));
  const T fx = floor(w), fy = floor(h);
  s->x0 = static_cast<int64_t>(fx);
  s->y0 = static_cast<int64_t>(fy);
  s->x1 = static_cast<int64_t>(ceil(w));
  s->y1 = static_cast<int64_t>(ceil(h));
  s->dx = w - fx;
  s->dy = h - fy;
  return true;
}

template <typename T>
__global__ void forward_kernel(int64_t total, const T* __restrict__ features,
                               const T* __restrict__ rois, const T* __restrict__ offsets,
                               T* __restrict__ out, T* __restrict__ count, int B, int C, int H,
                               int W, int P, int Q, int S, T scale, T trans_std) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int pw = static_cast<int>(idx % P);
    const int ph = static_cast<int>((idx / P) % P);
    const int c = static_cast<int>((idx / (P * P)) % C);
    const int64_t n = idx / (static_cast<int64_t>(P) * P * C);
    const BinGeometry<T> g = bin_geometry(rois, offsets, n, ph, pw, B, P, Q, S, scale, trans_std);
    T sum = T(0);
    int valid = 0;
    if (g.batch >= 0) {
      const T* fm = features + (g.batch * C + c) * static_cast<int64_t>(H) * W;
      for (int ih = 0; ih < S; ++ih) {
        for (int iw = 0; iw < S; ++iw) {
          Sample<T> s;
          if (!make_sample(g.wstart + T(iw) * g.sub_w, g.hstart + T(ih) * g.sub_h, H, W, &s)) {
            continue;
          }
          const T v00 = fm[s.y0 * W + s.x0], v10 = fm[s.y1 * W + s.x0];
          const T v01 = fm[s.y0 * W + s.x1], v11 = fm[s.y1 * W + s.x1];
          sum += (T(1) - s.dx) * (T(1) - s.dy) * v00 + (T(1) - s.dx) * s.dy * v10 +
                 s.dx * (T(1) - s.dy) * v01 + s.dx * s.dy * v11;
          ++valid;
        }
      }
    }
    out[idx] = valid > 0 ? sum / T(valid) : T(0);
    if (c == 0) count[(n * P + ph) * P + pw] = T(valid);
  }
}

template <typename T>
__global__ void backward_features_kernel(int64_t total, const T* __restrict__ grad_out,
                                         const T* __restrict__ rois,
                                         const T* __restrict__ offsets,
                                         const T* __restrict__ count, T* __restrict__ grad_features,
                                         int B, int C, int H, int W, int P, int Q, int S, T scale,
                                         T trans_std) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int pw = static_cast<int>(idx % P);
    const int ph = static_cast<int>((idx / P) % P);
    const int c = static_cast<int>((idx / (P * P)) % C);
    const int64_t n = idx / (static_cast<int64_t>(P) * P * C);
    const T cnt = count[(n * P + ph) * P + pw];
    if (cnt == T(0)) continue;
    const BinGeometry<T> g = bin_geometry(rois, offsets, n, ph, pw, B, P, Q, S, scale, trans_std);
    if (g.batch < 0) continue;
    const T gd = grad_out[idx] / cnt;
    T* gm = grad_features + (g.batch * C + c) * static_cast<int64_t>(H) * W;
    for (int ih = 0; ih < S; ++ih) {
      for (int iw = 0; iw < S; ++iw) {
        Sample<T> s;
        if (!make_sample(g.wstart + T(iw) * g.sub_w, g.hstart + T(ih) * g.sub_h, H, W, &s)) {
          continue;
        }
        atomicAdd(gm + s.y0 * W + s.x0, (T(1) - s.dx) * (T(1) - s.dy) * gd);
        atomicAdd(gm + s.y1 * W + s.x0, (T(1) - s.dx) * s.dy * gd);
        atomicAdd(gm + s.y0 * W + s.x1, s.dx * (T(1) - s.dy) * gd);
        atomicAdd(gm + s.y1 * W + s.x1, s.dx * s.dy * gd);
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int delta = kWarp / 2; delta > 0; delta /= 2) v += __shfl_down_sync(0xffffffffu, v, delta);
  return v;
}

// One warp per bin. The clamp is differentiated as the identity (as the mmdet kernel does): a
// clamped sample sits on an integer row/column where floor == ceil, so its derivative there is 0.
template <typename T>
__global__ void backward_offsets_kernel(int64_t num_bins, const T* __restrict__ grad_out,
                                        const T* __restrict__ features,
                                        const T* __restrict__ rois, const T* __restrict__ offsets,
                                        const T* __restrict__ count, T* __restrict__ grad_offsets,
                                        int B, int C, int H, int W, int P, int Q, int S, T scale,
                                        T trans_std) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  for (int64_t bin = blockIdx.x * warps_per_block + threadIdx.x / kWarp; bin < num_bins;
       bin += warps_per_block * gridDim.x) {
    // ``bin`` is uniform across the warp, so every lane takes the same branches below
    const int pw = static_cast<int>(bin % P);
    const int ph = static_cast<int>((bin / P) % P);
    const int64_t n = bin / (static_cast<int64_t>(P) * P);
    const T cnt = count[bin];
    if (cnt == T(0)) continue;
    const BinGeometry<T> g = bin_geometry(rois, offsets, n, ph, pw, B, P, Q, S, scale, trans_std);
    if (g.batch < 0) continue;
    const int64_t plane = static_cast<int64_t>(H) * W;
    const T* go = grad_out + (n * C * P + ph) * P + pw;  // channel stride P*P
    const T* fb = features + g.batch * C * plane;
    T gx = T(0), gy = T(0);
    for (int ih = 0; ih < S; ++ih) {
      for (int iw = 0; iw < S; ++iw) {
        Sample<T> s;
        if (!make_sample(g.wstart + T(iw) * g.sub_w, g.hstart + T(ih) * g.sub_h, H, W, &s)) {
          continue;
        }
        for (int c = lane; c < C; c += kWarp) {
          const T* fm = fb + c * plane;
          const T v00 = fm[s.y0 * W + s.x0], v10 = fm[s.y1 * W + s.x0];
          const T v01 = fm[s.y0 * W + s.x1], v11 = fm[s.y1 * W + s.x1];
          const T gc = go[static_cast<int64_t>(c) * P * P];
          gx += gc * ((T(1) - s.dy) * (v01 - v00) + s.dy * (v11 - v10));
          gy += gc * ((T(1) - s.dx) * (v10 - v00) + s.dx * (v11 - v01));
        }
      }
    }
    gx = warp_sum(gx);
    gy = warp_sum(gy);
    if (lane == 0) {
      T* o = grad_offsets + n * 2 * Q * Q + g.part_h * Q + g.part_w;
      atomicAdd(o, gx / cnt * trans_std * g.roi_w);
      atomicAdd(o + Q * Q, gy / cnt * trans_std * g.roi_h);
    }
  }
}

}  // namespace

// Launchers (declared in deform_roi_pool.cpp, which checks the arguments).

void deform_roi_pool_forward_cuda(const at::Tensor& features, const at::Tensor& rois,
                                  const at::Tensor* offsets, at::Tensor& out, at::Tensor& count,
                                  double spatial_scale, int64_t P, int64_t Q, int64_t S,
                                  double trans_std) {
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t total = out.numel();
  if (total == 0) return;
  const int B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "deform_roi_pool_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, features.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
        offsets != nullptr ? offsets->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
        count.data_ptr<scalar_t>(), B, C, H, W, static_cast<int>(P), static_cast<int>(Q),
        static_cast<int>(S), static_cast<scalar_t>(spatial_scale),
        static_cast<scalar_t>(trans_std));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void deform_roi_pool_backward_features_cuda(const at::Tensor& grad_out, const at::Tensor& rois,
                                            const at::Tensor* offsets, const at::Tensor& count,
                                            at::Tensor& grad_features, double spatial_scale,
                                            int64_t P, int64_t Q, int64_t S, double trans_std) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t total = grad_out.numel();
  if (total == 0) return;
  const int B = grad_features.size(0), C = grad_features.size(1);
  const int H = grad_features.size(2), W = grad_features.size(3);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "deform_roi_pool_backward_features_cuda", [&] {
    backward_features_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, grad_out.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
        offsets != nullptr ? offsets->data_ptr<scalar_t>() : nullptr,
        count.data_ptr<scalar_t>(), grad_features.data_ptr<scalar_t>(), B, C, H, W,
        static_cast<int>(P), static_cast<int>(Q), static_cast<int>(S),
        static_cast<scalar_t>(spatial_scale), static_cast<scalar_t>(trans_std));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void deform_roi_pool_backward_offsets_cuda(const at::Tensor& grad_out, const at::Tensor& features,
                                           const at::Tensor& rois, const at::Tensor& offsets,
                                           const at::Tensor& count, at::Tensor& grad_offsets,
                                           double spatial_scale, int64_t P, int64_t Q, int64_t S,
                                           double trans_std) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t num_bins = count.numel();
  if (num_bins == 0) return;
  const int B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t threads_needed = num_bins * kWarp;
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "deform_roi_pool_backward_offsets_cuda", [&] {
    backward_offsets_kernel<scalar_t><<<blocks_for(threads_needed), kThreads, 0, stream>>>(
        num_bins, grad_out.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
        rois.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(), count.data_ptr<scalar_t>(),
        grad_offsets.data_ptr<scalar_t>(), B, C, H, W, static_cast<int>(P),
        static_cast<int>(Q), static_cast<int>(S), static_cast<scalar_t>(spatial_scale),
        static_cast<scalar_t>(trans_std));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace detlab
