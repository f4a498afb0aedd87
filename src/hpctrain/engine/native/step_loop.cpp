// The static step's kernel calls, run for many batches in one call from Python.
//
// engine/native/__init__.py builds this file once per machine (g++, cached) and engine/
// static_step.py writes the program it runs: the same ATen calls, in the same order and with the
// same arguments, as the step's generated Python, so both give bit-identical weights. What this
// removes is the interpreter and argument parsing around each call (~1-2 us per call, ~13 calls
// and the optimizer per step of a small MLP).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

namespace {

// Opcodes; each instruction is [opcode, operands...], operand counts fixed per opcode.
// A tensor operand is 2 * (index in the table) + (1 if transposed).
enum Op : int64_t {
  kMm = 0,             // out, a, b:           mm(a, b, out=out)
  kAddmmBias = 1,      // out, bias, a, b:     addmm(bias, a, b, out=out)
  kAddmmScaled = 2,    // out, a, b:           addmm(out, a, b, beta=0, alpha=scale, out=out)
  kOnednnCopy = 3,     // out, a, w, bias|-1:  out.copy_(onednn(a, w, bias))
  kOnednnScaled = 4,   // out, a, w:           mul(onednn(a, w), scale, out=out)
  kOnednnHand = 5,     // slot, a, w:          handed[slot] = onednn(a, w)
  kHand = 6,           // slot, t:             handed[slot] = t
  kActivation = 7,     // kind, a:             in place
  kActivationBackward = 8,  // kind, grad, out
  kLossGradient = 9,   // kind, z, y, out, minus_ones: out = c * dloss/dz; scale = 1/c
  kScaleGradient = 10, // g:                   g *= scale; scale = 1
  kAddmvScaled = 11,   // out, a, v:           addmv(out, a, v, beta=0, alpha=scale, out=out)
  kDropout = 12,       // out, mask, a, torch_mask, rate:  out, mask = dropout(a) (new tensors)
  kDropoutBackward = 13,  // out, grad, mask, torch_mask, scale:  out = dropout backward of grad
};
constexpr int64_t kOperands[] = {3, 4, 3, 4, 3, 3, 2, 2, 3, 5, 1, 3, 5, 5};
enum Activation : int64_t { kRelu = 0, kTanh = 1, kSigmoid = 2 };
enum Loss : int64_t { kCrossEntropy = 0, kBinaryCrossEntropy = 1, kSquaredError = 2, kAbsoluteError = 3 };
// Table slots rebound per batch: the batch, its targets, the logits' destination.
constexpr int64_t kX = 0, kY = 1, kZ = 2;

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         std::string_view, c10::List<std::optional<at::Scalar>>,
                                         std::optional<std::string_view>)>();
  return op.call(x, weight, bias, "none", c10::List<std::optional<at::Scalar>>(), std::string_view(""));
}

// The multiplier Python passes as a number: a wrapped scalar, as its argument parser makes it.
at::Tensor wrapped(double value) {
  at::Tensor t = at::scalar_to_tensor(value);
  t.unsafeGetTensorImpl()->set_wrapped_number(true);
  return t;
}

// A float operand travels as the bits of a double.
double real(int64_t bits) {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

struct Program {
  std::vector<at::Tensor>& table;
  std::vector<at::Tensor>& handed;
  double scale = 1.0;

  at::Tensor operand(int64_t code) const {
    const at::Tensor& t = table[code >> 1];
    return (code & 1) ? t.t() : t;
  }

  double loss_gradient(int64_t kind, const at::Tensor& z, const at::Tensor& y, at::Tensor out,
                       const at::Tensor& minus_ones, int64_t rows) {
    int64_t width = 1;
    for (int64_t d = 1; d < z.dim(); ++d) width *= z.size(d);
    switch (kind) {
      case kCrossEntropy:
        at::softmax_out(out, z, 1);
        if (y.scalar_type() == at::kLong) out.scatter_add_(1, y.unsqueeze(1), minus_ones);
        else out.sub_(y);
        return 1.0 / rows;
      case kBinaryCrossEntropy:
        at::sigmoid_out(out, z).sub_(y);
        return 1.0 / (rows * width);
      case kSquaredError:
        at::sub_out(out, z, y);
        return 2.0 / (rows * width);
      default:
        at::sub_out(out, z, y).sign_();
        return 1.0 / (rows * width);
    }
  }

  void run(const std::vector<int64_t>& code, int64_t rows) {
    scale = 1.0;
    for (size_t i = 0; i < code.size();) {
      const int64_t op = code[i];
      const int64_t* a = &code[i + 1];
      i += 1 + kOperands[op];
      switch (op) {
        case kMm: { at::Tensor out = operand(a[0]); at::mm_out(out, operand(a[1]), operand(a[2])); break; }
        case kAddmmBias: {
          at::Tensor out = operand(a[0]);
          at::addmm_out(out, operand(a[1]), operand(a[2]), operand(a[3]));
          break;
        }
        case kAddmmScaled: {
          at::Tensor out = operand(a[0]);
          at::addmm_out(out, out, operand(a[1]), operand(a[2]), 0, scale);
          break;
        }
        case kOnednnCopy: {
          std::optional<at::Tensor> bias;
          if (a[3] >= 0) bias = operand(a[3]);
          operand(a[0]).copy_(onednn_linear(operand(a[1]), operand(a[2]), bias));
          break;
        }
        case kOnednnScaled: {
          at::Tensor out = operand(a[0]);
          at::mul_out(out, onednn_linear(operand(a[1]), operand(a[2]), std::nullopt), wrapped(scale));
          break;
        }
        case kOnednnHand: handed[a[0]] = onednn_linear(operand(a[1]), operand(a[2]), std::nullopt); break;
        case kHand: handed[a[0]] = operand(a[1]); break;
        case kActivation: {
          at::Tensor t = operand(a[1]);
          if (a[0] == kRelu) t.relu_();
          else if (a[0] == kTanh) t.tanh_();
          else t.sigmoid_();
          break;
        }
        case kActivationBackward: {
          at::Tensor grad = operand(a[1]);
          const at::Tensor out = operand(a[2]);
          if (a[0] == kRelu) at::threshold_backward_out(grad, grad, out, 0.0);
          else if (a[0] == kTanh) at::tanh_backward_out(grad, grad, out);
          else at::sigmoid_backward_out(grad, grad, out);
          break;
        }
        case kLossGradient:
          scale = loss_gradient(a[0], operand(a[1]), operand(a[2]), operand(a[3]), operand(a[4]), rows);
          break;
        case kScaleGradient: operand(a[0]).mul_(wrapped(scale)); scale = 1.0; break;
        case kAddmvScaled: {
          at::Tensor out = operand(a[0]);
          at::addmv_out(out, out, operand(a[1]), operand(a[2]), 0, scale);
          break;
        }
        case kDropout: {  // as engine/dropout.py's scaled_keep_mask, or torch.native_dropout
          const at::Tensor input = operand(a[2]);
          const double rate = real(a[4]);
          if (a[3]) {
            std::tie(table[a[0] >> 1], table[a[1] >> 1]) = at::native_dropout(input, rate, true);
          } else {
            at::Tensor mask = at::rand(input.sizes(), input.options().dtype(at::kFloat)).ge_(rate).mul_(1.0 / (1.0 - rate));
            table[a[0] >> 1] = input * mask;
            table[a[1] >> 1] = mask;
          }
          break;
        }
        case kDropoutBackward: {
          at::Tensor grad = operand(a[1]);
          const at::Tensor mask = operand(a[2]);
          table[a[0] >> 1] = a[3] ? at::native_dropout_backward(grad, mask, real(a[4])) : grad.mul_(mask);
          break;
        }
        default: TORCH_CHECK(false, "hpctrain step loop: unknown opcode ", op);
      }
    }
  }
};

// Runs ``sizes.size()`` steps on consecutive batches of ``x`` (``y``, ``logits``) of ``sizes[k]``
// rows each; each step: the program, the non-finite check, the step counter, the fused update.
// Returns the gradients the last update took (``handed`` slots replaced by the program).
std::vector<at::Tensor> run_steps(at::TensorList bound, at::IntArrayRef code_ref, const at::Tensor& x,
                                  const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& logits,
                                  at::IntArrayRef sizes, at::TensorList params, at::TensorList grads,
                                  at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList steps,
                                  at::TensorList counters, const at::Tensor& found_inf, const at::Tensor& one,
                                  const at::Tensor& bad_steps, bool check_handed, at::TensorList checked,
                                  double lr, double beta1, double beta2, double weight_decay, double eps,
                                  bool decoupled) {
  std::vector<at::Tensor> table(bound.begin(), bound.end());
  std::vector<at::Tensor> handed(grads.begin(), grads.end());
  const std::vector<int64_t> code(code_ref.begin(), code_ref.end());
  const std::vector<at::Tensor> checked_list(checked.begin(), checked.end());
  const at::Tensor z_default = table[kZ];
  at::Tensor found = found_inf, bad = bad_steps;
  Program program{table, handed};
  int64_t first = 0;
  for (int64_t rows : sizes) {
    table[kX] = x.narrow(0, first, rows);
    if (y) table[kY] = y->narrow(0, first, rows);
    table[kZ] = logits ? logits->narrow(0, first, rows) : z_default;
    first += rows;
    program.run(code, rows);
    at::_amp_foreach_non_finite_check_and_unscale_(check_handed ? at::TensorList(handed) : at::TensorList(checked_list),
                                                   found, one);
    bad.add_(found);
    if (counters.size() == 1) counters[0].add_(one);
    else at::_foreach_add_(counters, one);
    if (decoupled)
      at::_fused_adamw_(params, handed, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2, weight_decay, eps,
                        false, false, std::nullopt, found);
    else
      at::_fused_adam_(params, handed, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2, weight_decay, eps,
                       false, false, std::nullopt, found);
  }
  return handed;
}

}  // namespace

TORCH_LIBRARY(hpctrain_native, m) {
  m.def("run_steps(Tensor[] bound, int[] code, Tensor x, Tensor? y, Tensor? logits, int[] sizes, Tensor[] params, "
        "Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, Tensor[] steps, Tensor[] counters, "
        "Tensor found_inf, Tensor one, Tensor bad_steps, bool check_handed, Tensor[] checked, float lr, "
        "float beta1, float beta2, float weight_decay, float eps, bool decoupled) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hpctrain_native, CPU, m) { m.impl("run_steps", run_steps); }
