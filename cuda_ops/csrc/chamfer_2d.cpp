// Python binding and argument checks for the 2-D Chamfer distance CUDA kernels
// (chamfer_2d_cuda.cu). Called from cuda_ops.chamfer_2d's autograd Function, which passes
// contiguous tensors of one floating dtype on one CUDA device.
//
//   forward(a [P,N,2], b [P,M,2]) -> (dist_ab [P,N], dist_ba [P,M], idx_ab [P,N], idx_ba [P,M])
//   backward(a, b, idx_ab, idx_ba, grad_dist_ab [P,N], grad_dist_ba [P,M])
//       -> (grad_a [P,N,2], grad_b [P,M,2])
//
// Distances are squared Euclidean, indices int64 (the lowest index among equal distances);
// dtypes float32 and float64. See chamfer_2d_cuda.cu for the definitions.

#include <torch/extension.h>

#include <tuple>

namespace detlab {

void chamfer_2d_forward_cuda(const at::Tensor& a, const at::Tensor& b, at::Tensor& dist_ab,
                             at::Tensor& dist_ba, at::Tensor& idx_ab, at::Tensor& idx_ba);
void chamfer_2d_backward_cuda(const at::Tensor& a, const at::Tensor& b,
                              const at::Tensor& idx_ab, const at::Tensor& idx_ba,
                              const at::Tensor& grad_ab, const at::Tensor& grad_ba,
                              at::Tensor& grad_a, at::Tensor& grad_b);

namespace {

void check_cuda_contiguous(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ",
              t.device());
}

void check_points(const at::Tensor& t, const char* name, const at::Tensor& like) {
  check_cuda_contiguous(t, name, like);
  TORCH_CHECK(t.dim() == 3 && t.size(2) == 2, name, " must be [P, K, 2], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.size(0) == like.size(0), name, " must have ", like.size(0),
              " instances, got ", t.size(0));
}

// a [P, K] tensor of dtype `dtype` matching the first two sizes of `points`
void check_per_point(const at::Tensor& t, const char* name, const at::Tensor& points,
                     at::ScalarType dtype) {
  check_cuda_contiguous(t, name, points);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == points.size(0) && t.size(1) == points.size(1),
              name, " must be [", points.size(0), ", ", points.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& a,
                                                                   const at::Tensor& b) {
  check_points(a, "a", a);
  check_points(b, "b", a);
  const int64_t P = a.size(0), N = a.size(1), M = b.size(1);
  TORCH_CHECK(P == 0 || (N > 0 && M > 0), "point sets must be non-empty, got N=", N,
              ", M=", M);
  // every element is written by the kernels
  at::Tensor dist_ab = at::empty({P, N}, a.options());
  at::Tensor dist_ba = at::empty({P, M}, a.options());
  at::Tensor idx_ab = at::empty({P, N}, a.options().dtype(at::kLong));
  at::Tensor idx_ba = at::empty({P, M}, a.options().dtype(at::kLong));
  chamfer_2d_forward_cuda(a, b, dist_ab, dist_ba, idx_ab, idx_ba);
  return {dist_ab, dist_ba, idx_ab, idx_ba};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& a, const at::Tensor& b,
                                            const at::Tensor& idx_ab, const at::Tensor& idx_ba,
                                            const at::Tensor& grad_ab,
                                            const at::Tensor& grad_ba) {
  check_points(a, "a", a);
  check_points(b, "b", a);
  check_per_point(idx_ab, "idx_ab", a, at::kLong);
  check_per_point(idx_ba, "idx_ba", b, at::kLong);
  check_per_point(grad_ab, "grad_dist_ab", a, a.scalar_type());
  check_per_point(grad_ba, "grad_dist_ba", b, a.scalar_type());
  at::Tensor grad_a = at::empty(a.sizes(), a.options());
  at::Tensor grad_b = at::empty(b.sizes(), b.options());
  chamfer_2d_backward_cuda(a, b, idx_ab, idx_ba, grad_ab, grad_ba, grad_a, grad_b);
  return {grad_a, grad_b};
}

}  // namespace detlab

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "2-D Chamfer distance (nearest-neighbour squared distances and indices), CUDA";
  m.def("forward", &detlab::forward, "forward -> (dist_ab, dist_ba, idx_ab, idx_ba)",
        py::arg("a"), py::arg("b"));
  m.def("backward", &detlab::backward, "gradients w.r.t. a and b -> (grad_a, grad_b)",
        py::arg("a"), py::arg("b"), py::arg("idx_ab"), py::arg("idx_ba"),
        py::arg("grad_dist_ab"), py::arg("grad_dist_ba"));
}
