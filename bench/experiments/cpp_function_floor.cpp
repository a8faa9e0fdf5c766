// The cost of an empty C++ autograd Function registered as an operator, to set beside
// python_function_floor.py's empty Python Function: what a C++ kernel of bnorm.torch would
// start from. Forward allocates the output; backward passes the gradient through.
//
//   g++ -O2 -shared -fPIC -std=c++17 -I/usr/include/torch/csrc/api/include \
//       bench/experiments/cpp_function_floor.cpp -o /tmp/cpp_function_floor.so \
//       -ltorch -ltorch_cpu -lc10                  # needs libtorch-dev
//   /usr/bin/python3 -c "import torch, timeit; torch.ops.load_library('/tmp/cpp_function_floor.so');
//     x = torch.randn(8, 3, 4, 4, requires_grad=True); dy = torch.randn(8, 3, 4, 4);
//     f = torch.ops.bnorm_floor.empty; n = 20000;
//     print(timeit.timeit(lambda: f(x), number=n) / n * 1e6,
//           timeit.timeit(lambda: f(x).backward(dy), number=n) / n * 1e6)"
#include <torch/autograd.h>
#include <torch/library.h>

namespace {

struct Empty : public torch::autograd::Function<Empty> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x) {
    ctx->save_for_backward({x});
    return at::empty_like(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *,
                                                 torch::autograd::variable_list dy) {
    return {dy[0]};
  }
};

at::Tensor empty_autograd(const at::Tensor &x) { return Empty::apply(x); }
at::Tensor empty_cpu(const at::Tensor &x) { return at::empty_like(x); }

}  // namespace

TORCH_LIBRARY(bnorm_floor, m) { m.def("empty(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(bnorm_floor, CPU, m) { m.impl("empty", empty_cpu); }
TORCH_LIBRARY_IMPL(bnorm_floor, Autograd, m) { m.impl("empty", empty_autograd); }
