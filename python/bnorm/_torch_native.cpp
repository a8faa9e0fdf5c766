// bnorm.torch's ordinary call in C++: the C library's route of _functional.py (float32,
// float64, bfloat16 and float16 CPU tensors the library reads as they are) taken without Python in between, so that a
// small layer costs no more than torch.nn's does. Through ctypes and a Python autograd Function
// the same call costs 1.5-2.1x torch's (docs/performance.md).
//
//   batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
//       F.batch_norm's arguments. The output, or None where this path does not take the call:
//       then _functional routes it in Python as before. Taken: every tensor a plain CPU tensor
//       with memory (no negative view, no functorch wrapper, no subclass that intercepts
//       dispatch, no override of the torch function protocol), input float32, float64,
//       bfloat16 or float16 with at least 2 dimensions and one element, contiguous or
//       channels_last / channels_last_3d; weight, bias and running statistics None or
//       contiguous (C) tensors of one dtype: the input's, or float32 beside a 16-bit input;
//       running statistics given in eval and not requiring grad where grad is enabled; more
//       than one value per channel in training; training a bool, momentum and eps floats (or
//       ints), 0 <= eps < inf, 0 <= momentum <= 1 where running statistics are blended; not
//       under torch.jit tracing (which records bnorm's operator instead). Every call taken here
//       is one _functional._route sends to the C library (tests/python/test_torch_native.py).
//   accepts(same arguments)   whether batch_norm would take the call (for the tests)
//   bind(functions, check, composite_backward)
//       functions: the addresses of the library's functions, by name, from the library
//       _lib.py loaded (so both paths run the same library); check(status, name) raises
//       BnormError; composite_backward(training, dy, input, weight, a, b, eps) is
//       _functional's formula for a backward pass autograd records (create_graph) or a
//       gradient without memory (vmap's).
//
// Autograd: where grad is enabled and input, weight or bias requires grad, the output gets an
// autograd node whose backward is bn_backward_train (from the float64 statistics the forward
// pass saved) or bn_backward_eval (from the running statistics themselves, so that changing
// them in place before the backward pass is autograd's error, as with torch). Forward-mode AD
// is not here: _functional calls this path only outside forward_ad.dual_level.
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/utils/disable_torch_function.h>
#include <torch/extension.h>

#include <cmath>
#include <string>

#include "bnorm.h"

namespace py = pybind11;
using torch::autograd::variable_list;

namespace {

struct Library {
  decltype(&bn_desc_from_dims) desc_from_dims = nullptr;
  decltype(&bn_forward_train) forward_train = nullptr;
  decltype(&bn_forward_eval) forward_eval = nullptr;
  decltype(&bn_backward_train) backward_train = nullptr;
  decltype(&bn_backward_eval) backward_eval = nullptr;
  decltype(&bn_status_string) status_string = nullptr;
};

Library lib;
// Python callables, kept for the life of the process (never released: they outlive the
// interpreter's teardown of this module)
py::handle check_status;
py::handle composite_backward;

// One call's arguments, as the C library takes them.
struct Call {
  at::Tensor x, running_mean, running_var, weight, bias;  // undefined: None
  bool training = false;
  double momentum = 0, eps = 0;
  bn_layout layout = BN_CHANNELS_FIRST;
  bn_params params = BN_PARAMS_AS_TENSOR;  // float32 per-channel tensors beside a 16-bit input
};

bool is_half(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// A tensor whose memory the C library reads as its values: CPU, strided, with storage, and no
// dispatch key but those of every CPU tensor (a negative view, functorch's wrappers and
// subclasses that intercept dispatch all carry one more).
// Some wrappers (the batched tensors of autograd's own vmap) show no such key but refuse to
// tell their device: false for those too.
bool plain(const at::Tensor &t) {
  static const c10::DispatchKeySet ordinary({c10::DispatchKey::CPU, c10::DispatchKey::AutogradCPU,
                                             c10::DispatchKey::ADInplaceOrView,
                                             c10::DispatchKey::AutocastCPU});
  try {
    return ordinary.isSupersetOf(t.key_set()) && t.layout() == at::kStrided &&
           t.device().is_cpu() && t.has_storage() && t.data_ptr() != nullptr;
  } catch (const c10::Error &) {
    return false;
  }
}

bool tensor_of(py::handle h, at::Tensor &out) {
  if (!THPVariable_Check(h.ptr())) return false;
  out = THPVariable_Unpack(h.ptr());
  return true;
}

// A Python float or int as a double; false for anything else (the Python route decides).
bool real_of(py::handle h, double &out) {
  if (!PyFloat_Check(h.ptr()) && !PyLong_CheckExact(h.ptr())) return false;
  out = PyFloat_AsDouble(h.ptr());
  if (out == -1.0 && PyErr_Occurred()) {  // an int too large for a double
    PyErr_Clear();
    return false;
  }
  return true;
}

void *address(const at::Tensor &t) { return t.defined() ? t.data_ptr() : nullptr; }

// Fills call where the arguments are those this path takes (see the top of the file).
bool accept(py::handle input, py::handle running_mean, py::handle running_var,
            py::handle weight, py::handle bias, py::handle training, py::handle momentum,
            py::handle eps, Call &call) {
  if (torch::jit::tracer::isTracing()) return false;  // recorded as bnorm's operator instead
  if (!tensor_of(input, call.x) || torch::check_has_torch_function(input.ptr()) ||
      !plain(call.x))
    return false;
  const at::Tensor &x = call.x;
  const at::ScalarType dtype = x.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kDouble && !is_half(dtype)) || x.dim() < 2 ||
      x.numel() == 0)
    return false;
  if (x.is_contiguous())
    call.layout = BN_CHANNELS_FIRST;
  else if ((x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
           (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)))
    call.layout = BN_CHANNELS_LAST;
  else
    return false;
  const py::handle given[4] = {running_mean, running_var, weight, bias};
  at::Tensor *slot[4] = {&call.running_mean, &call.running_var, &call.weight, &call.bias};
  bool first = true;
  for (int i = 0; i < 4; i++) {
    if (given[i].is_none()) continue;
    if (!tensor_of(given[i], *slot[i]) || torch::check_has_torch_function(given[i].ptr()))
      return false;
    const at::Tensor &t = *slot[i];
    // one dtype for all of them: the input's, or float32 beside a 16-bit input
    const bool f32 = is_half(dtype) && t.scalar_type() == at::kFloat;
    if (first) call.params = f32 ? BN_PARAMS_FLOAT32 : BN_PARAMS_AS_TENSOR;
    first = false;
    if (!plain(t) || !(t.scalar_type() == dtype || f32) ||
        (f32 != (call.params == BN_PARAMS_FLOAT32)) || t.dim() != 1 ||
        t.size(0) != x.size(1) || !t.is_contiguous())
      return false;
  }
  if (!PyBool_Check(training.ptr())) return false;
  call.training = training.ptr() == Py_True;
  if (call.training && x.numel() == x.size(1)) return false;  // torch's error: one value
  const bool has_mean = call.running_mean.defined(), has_var = call.running_var.defined();
  if (!call.training && !(has_mean && has_var)) return false;  // torch's error
  if (at::GradMode::is_enabled() && ((has_mean && call.running_mean.requires_grad()) ||
                                     (has_var && call.running_var.requires_grad())))
    return false;  // torch's error: running statistics take no gradient
  if (!real_of(momentum, call.momentum) || !real_of(eps, call.eps)) return false;
  if (!(call.eps >= 0 && std::isfinite(call.eps))) return false;
  if (call.training && (has_mean || has_var) && !(call.momentum >= 0 && call.momentum <= 1))
    return false;
  return true;
}

[[noreturn]] void raise_status(bn_status status, const char *function) {
  check_status(static_cast<int>(status), function);  // raises BnormError
  throw std::logic_error(std::string("bnorm: ") + function + " failed");
}

bn_desc desc_of(const at::Tensor &x, bn_layout layout, bn_params params) {
  bn_desc desc;
  const at::ScalarType t = x.scalar_type();
  const bn_dtype dtype = t == at::kFloat      ? BN_FLOAT32
                         : t == at::kDouble   ? BN_FLOAT64
                         : t == at::kBFloat16 ? BN_BFLOAT16
                                              : BN_FLOAT16;
  const bn_status status = lib.desc_from_dims(&desc, static_cast<int>(x.dim()), x.sizes().data(),
                                        dtype, layout);
  if (status != BN_OK) raise_status(status, "bn_desc_from_dims");
  desc.params = params;
  return desc;
}

// What the forward pass leaves for the backward pass: in training one (2, C) float64 tensor,
// save_mean then save_invstd (a), b undefined; in eval the running statistics (a, b).
struct Forward {
  at::Tensor y, a, b;
};

Forward forward_pass(const Call &call) {
  const at::Tensor &x = call.x;
  const bn_desc desc = desc_of(x, call.layout, call.params);
  Forward out;
  out.y = at::empty_like(x);  // x's strides: the output keeps the memory format
  bn_status status;
  if (call.training) {
    const int64_t c = x.size(1);
    out.a = at::empty({2, c}, at::TensorOptions().dtype(at::kDouble));
    double *mean = out.a.data_ptr<double>();
    bn_options opt = BN_OPTIONS_DEFAULT;
    opt.eps = call.eps;
    opt.momentum = call.momentum;  // the factor torch would use; counting is the module's
    opt.renorm_momentum = call.momentum;
    {
      py::gil_scoped_release unlocked;
      status = lib.forward_train(out.y.data_ptr(), mean, mean + c, address(call.running_mean),
                                 address(call.running_var), nullptr, x.data_ptr(),
                                 address(call.weight), address(call.bias), &desc, &opt);
    }
    if (status != BN_OK) raise_status(status, "bn_forward_train");
  } else {
    out.a = call.running_mean;
    out.b = call.running_var;
    {
      py::gil_scoped_release unlocked;
      status = lib.forward_eval(out.y.data_ptr(), x.data_ptr(), call.running_mean.data_ptr(),
                                call.running_var.data_ptr(), address(call.weight),
                                address(call.bias), &desc, call.eps);
    }
    if (status != BN_OK) raise_status(status, "bn_forward_eval");
  }
  return out;
}

at::Tensor tensor_or_undefined(py::handle h) {
  return h.is_none() ? at::Tensor() : THPVariable_Unpack(h.ptr());
}

// (dx, dweight, dbias) by _functional's formula, which autograd can differentiate again.
variable_list formula_backward(bool training, const at::Tensor &dy, const at::Tensor &input,
                               const at::Tensor &weight, const at::Tensor &a,
                               const at::Tensor &b, double eps) {
  py::gil_scoped_acquire locked;
  const auto maybe = [](const at::Tensor &t) { return t.defined() ? py::cast(t) : py::none(); };
  py::tuple grads = py::reinterpret_steal<py::tuple>(
      PyObject_CallFunctionObjArgs(composite_backward.ptr(), training ? Py_True : Py_False,
                                   maybe(dy).ptr(), maybe(input).ptr(), maybe(weight).ptr(),
                                   maybe(a).ptr(), maybe(b).ptr(), py::float_(eps).ptr(),
                                   nullptr));
  if (!grads) throw py::error_already_set();
  return {tensor_or_undefined(grads[0]), tensor_or_undefined(grads[1]),
          tensor_or_undefined(grads[2])};
}

}  // namespace

namespace bnorm {

// The autograd node of a call, built as torch's own generated nodes are (a Node with saved
// variables, its edges to input, weight and bias, set as the output's history) rather than
// through torch::autograd::Function, whose bookkeeping costs about 1 us a call. Saved: input,
// weight and the forward pass's a and b, with autograd's checks of in-place changes.
// grad_fn.name(): "bnorm::BatchNormBackward".
struct BatchNormBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable input, weight, a, b;
  bool training = false;
  bn_layout layout = BN_CHANNELS_FIRST;
  bn_params params = BN_PARAMS_AS_TENSOR;
  double eps = 0;

  std::string name() const override { return "bnorm::BatchNormBackward"; }

  void release_variables() override {
    input.reset_data();
    weight.reset_data();
    a.reset_data();
    b.reset_data();
  }

  // grads: dy; returns (dx, dweight, dbias), each only where its edge asks for it
  variable_list apply(variable_list &&grads) override {
    const auto self = shared_from_this();
    const at::Tensor x = input.unpack(self), w = weight.unpack(self);
    const at::Tensor sa = a.unpack(self), sb = b.unpack(self);
    const bool need[3] = {task_should_compute_output(0), task_should_compute_output(1),
                          task_should_compute_output(2)};
    variable_list out(3);
    if (!grads[0].defined() || !(need[0] || need[1] || need[2])) return out;
    if (at::GradMode::is_enabled() || !plain(grads[0])) {
      // create_graph, or vmap's batched gradient: a backward autograd can see through
      const variable_list g = formula_backward(training, grads[0], x, w, sa, sb, eps);
      for (int i = 0; i < 3; i++)
        if (need[i]) out[i] = g[i];
      return out;
    }
    // dy with x's strides (a copy only when autograd hands over others)
    at::Tensor dy = grads[0];
    if (dy.strides() != x.strides()) dy = at::empty_like(x).copy_(grads[0]);
    const int64_t c = x.size(1);
    if (need[0]) out[0] = at::empty_like(x);
    // dweight and dbias in the parameters' dtype
    const at::TensorOptions per_channel =
        params == BN_PARAMS_FLOAT32 ? x.options().dtype(at::kFloat) : x.options();
    if (need[1]) out[1] = at::empty({c}, per_channel);
    if (need[2]) out[2] = at::empty({c}, per_channel);
    const bn_desc desc = desc_of(x, layout, params);
    bn_status status;
    if (training) {
      const double *mean = sa.data_ptr<double>();
      status = lib.backward_train(address(out[0]), address(out[1]), address(out[2]),
                                  dy.data_ptr(), x.data_ptr(), mean, mean + c, address(w),
                                  &desc);
    } else {
      status = lib.backward_eval(address(out[0]), address(out[1]), address(out[2]),
                                 dy.data_ptr(), x.data_ptr(), sa.data_ptr(), sb.data_ptr(),
                                 address(w), &desc, eps);
    }
    TORCH_CHECK(status == BN_OK, "bnorm: ", training ? "bn_backward_train" : "bn_backward_eval",
                ": ", lib.status_string(status));
    return out;
  }
};

}  // namespace bnorm

namespace {

// The forward pass with its autograd node (where grad is enabled and input, weight or bias
// requires grad), as torch's generated code records its operators.
at::Tensor forward_recorded(const Call &call) {
  std::shared_ptr<bnorm::BatchNormBackward> node(new bnorm::BatchNormBackward(),
                                                 torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(call.x, call.weight, call.bias));
  Forward f;
  {
    at::AutoDispatchBelowADInplaceOrView below;  // the kernel's own tensors take no history
    f = forward_pass(call);
  }
  node->input = torch::autograd::SavedVariable(call.x, false);
  node->weight = torch::autograd::SavedVariable(call.weight, false);
  node->a = torch::autograd::SavedVariable(f.a, false);
  node->b = torch::autograd::SavedVariable(f.b, false);
  node->training = call.training;
  node->layout = call.layout;
  node->params = call.params;
  node->eps = call.eps;
  torch::autograd::set_history(f.y, node);
  return f.y;
}

py::object batch_norm(py::handle input, py::handle running_mean, py::handle running_var,
                      py::handle weight, py::handle bias, py::handle training,
                      py::handle momentum, py::handle eps) {
  Call call;
  if (!lib.forward_train ||
      !accept(input, running_mean, running_var, weight, bias, training, momentum, eps, call))
    return py::none();
  const bool records = at::GradMode::is_enabled() &&
                       (call.x.requires_grad() ||
                        (call.weight.defined() && call.weight.requires_grad()) ||
                        (call.bias.defined() && call.bias.requires_grad()));
  if (records) return py::cast(forward_recorded(call));
  return py::cast(forward_pass(call).y);
}

bool accepts(py::handle input, py::handle running_mean, py::handle running_var,
             py::handle weight, py::handle bias, py::handle training, py::handle momentum,
             py::handle eps) {
  Call call;
  return accept(input, running_mean, running_var, weight, bias, training, momentum, eps, call);
}

template <typename F>
void bind_one(F &slot, const py::dict &functions, const char *name) {
  slot = reinterpret_cast<F>(functions[name].cast<std::uintptr_t>());
}

void bind(const py::dict &functions, py::object check, py::object formula) {
  Library l;
  bind_one(l.desc_from_dims, functions, "bn_desc_from_dims");
  bind_one(l.forward_train, functions, "bn_forward_train");
  bind_one(l.forward_eval, functions, "bn_forward_eval");
  bind_one(l.backward_train, functions, "bn_backward_train");
  bind_one(l.backward_eval, functions, "bn_backward_eval");
  bind_one(l.status_string, functions, "bn_status_string");
  check_status = check.release();
  composite_backward = formula.release();
  lib = l;
}

}  // namespace

PYBIND11_MODULE(_torch_native, m) {
  m.def("bind", &bind);
  m.def("batch_norm", &batch_norm);
  m.def("accepts", &accepts);
}
