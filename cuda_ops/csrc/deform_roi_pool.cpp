// Python binding and argument checks for the deformable RoI pooling CUDA kernels
// (deform_roi_pool_cuda.cu). Called from cuda_ops.deform_roi_pool's autograd Function, which
// passes contiguous tensors of one floating dtype on one CUDA device.
//
//   forward(features [B,C,H,W], rois [N,5], offsets [N,2,Q,Q] | None, spatial_scale,
//           output_size P, part_size Q, sample_per_part S, trans_std)
//       -> (out [N,C,P,P], count [N,P,P])
//   backward_features(grad_out [N,C,P,P], rois, offsets | None, count, B, H, W,
//                     spatial_scale, P, Q, S, trans_std) -> grad_features [B,C,H,W]
//   backward_offsets(grad_out, features, rois, offsets, count, spatial_scale, P, Q, S,
//                    trans_std) -> grad_offsets [N,2,Q,Q]

#include <torch/extension.h>

#include <tuple>

namespace detlab {

void deform_roi_pool_forward_cuda(const at::Tensor& features, const at::Tensor& rois,
                                  const at::Tensor* offsets, at::Tensor& out, at::Tensor& count,
                                  double spatial_scale, int64_t P, int64_t Q, int64_t S,
                                  double trans_std);
void deform_roi_pool_backward_features_cuda(const at::Tensor& grad_out, const at::Tensor& rois,
                                            const at::Tensor* offsets, const at::Tensor& count,
                                            at::Tensor& grad_features, double spatial_scale,
                                            int64_t P, int64_t Q, int64_t S, double trans_std);
void deform_roi_pool_backward_offsets_cuda(const at::Tensor& grad_out, const at::Tensor& features,
                                           const at::Tensor& rois, const at::Tensor& offsets,
                                           const at::Tensor& count, at::Tensor& grad_offsets,
                                           double spatial_scale, int64_t P, int64_t Q, int64_t S,
                                           double trans_std);

namespace {

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t dim) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ",
              t.device());
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dims, got ", t.dim());
}

void check_params(int64_t P, int64_t Q, int64_t S) {
  TORCH_CHECK(P > 0 && Q > 0 && S > 0, "output_size, part_size and sample_per_part must be > 0");
}

const at::Tensor* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? &t.value() : nullptr;
}

void check_offsets(const at::Tensor* offsets, const at::Tensor& like, int64_t N, int64_t Q) {
  if (offsets == nullptr) return;
  check_tensor(*offsets, "offsets", like, 4);
  TORCH_CHECK(offsets->size(0) == N && offsets->size(1) == 2 && offsets->size(2) == Q &&
                  offsets->size(3) == Q,
              "offsets must be [", N, ", 2, ", Q, ", ", Q, "], got ", offsets->sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& features, const at::Tensor& rois,
                                           const c10::optional<at::Tensor>& offsets,
                                           double spatial_scale, int64_t P, int64_t Q, int64_t S,
                                           double trans_std) {
  check_params(P, Q, S);
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble,
              "features must be float32 or float64, got ", features.scalar_type());
  check_tensor(features, "features", features, 4);
  check_tensor(rois, "rois", features, 2);
  TORCH_CHECK(rois.size(1) == 5, "rois must be [N, 5], got ", rois.sizes());
  const int64_t N = rois.size(0);
  const at::Tensor* off = optional_ptr(offsets);
  check_offsets(off, features, N, Q);
  at::Tensor out = at::empty({N, features.size(1), P, P}, features.options());
  at::Tensor count = at::empty({N, P, P}, features.options());
  deform_roi_pool_forward_cuda(features, rois, off, out, count, spatial_scale, P, Q, S,
                               trans_std);
  return {out, count};
}

at::Tensor backward_features(const at::Tensor& grad_out, const at::Tensor& rois,
                             const c10::optional<at::Tensor>& offsets, const at::Tensor& count,
                             int64_t B, int64_t H, int64_t W, double spatial_scale, int64_t P,
                             int64_t Q, int64_t S, double trans_std) {
  check_params(P, Q, S);
  check_tensor(grad_out, "grad_out", grad_out, 4);
  check_tensor(rois, "rois", grad_out, 2);
  check_tensor(count, "count", grad_out, 3);
  const int64_t N = rois.size(0);
  TORCH_CHECK(grad_out.size(0) == N && grad_out.size(2) == P && grad_out.size(3) == P,
              "grad_out must be [", N, ", C, ", P, ", ", P, "], got ", grad_out.sizes());
  const at::Tensor* off = optional_ptr(offsets);
  check_offsets(off, grad_out, N, Q);
  at::Tensor grad_features = at::zeros({B, grad_out.size(1), H, W}, grad_out.options());
  deform_roi_pool_backward_features_cuda(grad_out, rois, off, count, grad_features,
                                         spatial_scale, P, Q, S, trans_std);
  return grad_features;
}

at::Tensor backward_offsets(const at::Tensor& grad_out, const at::Tensor& features,
                            const at::Tensor& rois, const at::Tensor& offsets,
                            const at::Tensor& count, double spatial_scale, int64_t P, int64_t Q,
                            int64_t S, double trans_std) {
  check_params(P, Q, S);
  check_tensor(grad_out, "grad_out", grad_out, 4);
  check_tensor(features, "features", grad_out, 4);
  check_tensor(rois, "rois", grad_out, 2);
  check_tensor(count, "count", grad_out, 3);
  const int64_t N = rois.size(0);
  check_offsets(&offsets, grad_out, N, Q);
  TORCH_CHECK(grad_out.size(0) == N && grad_out.size(1) == features.size(1) &&
                  grad_out.size(2) == P && grad_out.size(3) == P,
              "grad_out must be [", N, ", ", features.size(1), ", ", P, ", ", P, "], got ",
              grad_out.sizes());
  at::Tensor grad_offsets = at::zeros_like(offsets);
  deform_roi_pool_backward_offsets_cuda(grad_out, features, rois, offsets, count, grad_offsets,
                                        spatial_scale, P, Q, S, trans_std);
  return grad_offsets;
}

}  // namespace detlab

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Deformable RoI pooling (mmdet v1 deform_psroi_pooling, group_size=1), CUDA";
  m.def("forward", &detlab::forward, "forward -> (out [N,C,P,P], count [N,P,P])",
        py::arg("features"), py::arg("rois"), py::arg("offsets"), py::arg("spatial_scale"),
        py::arg("output_size"), py::arg("part_size"), py::arg("sample_per_part"),
        py::arg("trans_std"));
  m.def("backward_features", &detlab::backward_features, "gradient w.r.t. features [B,C,H,W]",
        py::arg("grad_out"), py::arg("rois"), py::arg("offsets"), py::arg("count"),
        py::arg("batch_size"), py::arg("height"), py::arg("width"), py::arg("spatial_scale"),
        py::arg("output_size"), py::arg("part_size"), py::arg("sample_per_part"),
        py::arg("trans_std"));
  m.def("backward_offsets", &detlab::backward_offsets, "gradient w.r.t. offsets [N,2,Q,Q]",
        py::arg("grad_out"), py::arg("features"), py::arg("rois"), py::arg("offsets"),
        py::arg("count"), py::arg("spatial_scale"), py::arg("output_size"),
        py::arg("part_size"), py::arg("sample_per_part"), py::arg("trans_std"));
}
