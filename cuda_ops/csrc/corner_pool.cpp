// Python binding and argument checks for the corner pooling CUDA kernels
// (corner_pool_cuda.cu). Called from cuda_ops.corner_pool's autograd Function, which passes
// contiguous tensors of one floating dtype on one CUDA device.
//
//   forward(input [B,C,H,W], direction) -> out [B,C,H,W]
//   backward(input [B,C,H,W], grad_out [B,C,H,W], direction) -> grad_input [B,C,H,W]
//
// direction is "top", "bottom", "left" or "right" (see corner_pool_cuda.cu for the
// definitions); dtypes float32, float64, float16, bfloat16. The backward recomputes the
// argmax positions from the input instead of keeping them from the forward.

#include <torch/extension.h>

#include <string>

namespace detlab {

void corner_pool_forward_cuda(const at::Tensor& input, at::Tensor& out, int64_t direction);
void corner_pool_backward_cuda(const at::Tensor& input, const at::Tensor& grad_out,
                               at::Tensor& grad_input, int64_t direction);

namespace {

// Codes as in corner_pool_cuda.cu.
int64_t direction_code(const std::string& direction) {
  if (direction == "top") return 0;
  if (direction == "bottom") return 1;
  if (direction == "left") return 2;
  if (direction == "right") return 3;
  TORCH_CHECK(false, "direction must be 'top', 'bottom', 'left' or 'right', got '", direction,
              "'");
  return -1;
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == 4, name, " must be [B, C, H, W], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ",
              t.device());
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ",
              t.sizes());
}

}  // namespace

at::Tensor forward(const at::Tensor& input, const std::string& direction) {
  const int64_t code = direction_code(direction);
  check_tensor(input, "input", input);
  at::Tensor out = at::empty(input.sizes(), input.options());
  corner_pool_forward_cuda(input, out, code);
  return out;
}

at::Tensor backward(const at::Tensor& input, const at::Tensor& grad_out,
                    const std::string& direction) {
  const int64_t code = direction_code(direction);
  check_tensor(input, "input", input);
  check_tensor(grad_out, "grad_out", input);
  // every element is written by the kernel (0 where it is no argmax)
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  corner_pool_backward_cuda(input, grad_out, grad_input, code);
  return grad_input;
}

}  // namespace detlab

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Corner pooling (CornerNet top/bottom/left/right cumulative max), CUDA";
  m.def("forward", &detlab::forward, "forward -> out [B,C,H,W]", py::arg("input"),
        py::arg("direction"));
  m.def("backward", &detlab::backward, "gradient w.r.t. input [B,C,H,W]", py::arg("input"),
        py::arg("grad_out"), py::arg("direction"));
}
