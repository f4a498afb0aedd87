// The static step's kernel calls, run for many batches in one call from Python.
//
// engine/native/__init__.py builds this file once per machine (torch.utils.cpp_extension, cached)
// and engine/static_step.py writes the program it runs: the same ATen calls, in the same order and with the
// same arguments, as the step's generated Python, so both give bit-identical weights. What this
// removes is the interpreter and argument parsing around each call (~1-2 us per call, ~13 calls
// and the optimizer per step of a small MLP). Two calls are this file's own kernels: the Adam
// update (ATen's fused kernel's arithmetic, subnormals flushed) and the non-finite check (a
// read-only scan for ATen's read-and-rewrite), both below.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <immintrin.h>
#include <torch/library.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

namespace {

// The instruction set (Op, kOperands), the activation and loss kinds and the per-batch table
// slots (kX, kY, kZ): written from engine/native/code.py's tables, where they are defined.
#include "step_loop_opcodes.h"

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

// Runs a program's instructions for one batch.
struct Interpreter {
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
            const int64_t count = input.numel();
            const at::Tensor words = at::empty({(count + 1) / 2}, input.options().dtype(at::kInt)).random_();
            const at::Tensor levels =
                words.view(at::kShort).slice(0, 0, count).view(input.sizes()).bitwise_and_(kDropoutLevels - 1);
            at::Tensor mask = at::empty(input.sizes(), input.options().dtype(at::kFloat));
            at::ge_out(mask, levels, static_cast<int64_t>(std::ceil(rate * kDropoutLevels)));
            mask.mul_(1.0 / (1.0 - rate));
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
        case kAdd: { at::Tensor out = operand(a[0]); at::add_out(out, operand(a[1]), operand(a[2])); break; }
        case kAddTo: operand(a[0]).add_(operand(a[1])); break;
        case kCopy: operand(a[0]).copy_(operand(a[1])); break;
        default: TORCH_CHECK(false, "hpctrain step loop: unknown opcode ", op);
      }
    }
  }
};


// ---- Adam ---------------------------------------------------------------------------------------
//
// On trained optimizer state ATen's fused CPU Adam takes 1.4-1.7x as long per update as this
// kernel for the seed MLP's 25k parameters, 1.1-1.5x for the mid-size MLP's 1.9M, where memory
// bounds both (benchmarks/results/adam_kernel_*.txt; in the seed's step loop, 8 us on each
// thread against 3). It is the same update, rounding for rounding, as
// ATen's kernel in its AVX-512 build on float32: whole 16-float blocks as 16 lanes, then the
// tensor's last n % 16 floats as 8 lanes (where 8 remain: its compiler vectorized that loop) and
// one at a time, each with the fused multiply-adds where ATen's code has them (its compiler
// contracted a*b + c in places; this file is built with -ffp-contract=off and fuses explicitly).
// One difference: subnormal values are flushed to zero (FlushSubnormals). Otherwise the weights
// are bit-identical to torch._fused_adam_'s, which the Python loop calls (tests/
// test_native_adam.py). Elsewhere (no AVX-512, or ATen dispatching another build, or tensors
// that are not contiguous float32) ATen's kernel runs.

// Where ATen runs its AVX-512 kernels: the kernels below do their arithmetic.
bool avx512_build() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("fma") && at::get_cpu_capability() == "AVX512";
  return yes;
}

bool contiguous_floats(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (t.scalar_type() != at::kFloat || !t.is_contiguous() || !t.device().is_cpu()) return false;
  return true;
}

struct AdamArithmetic {
  float lerp_weight;  // exp_avg = fma(lerp_weight, g - exp_avg, base)
  bool lerp_base_is_average;
  float beta2, square_weight, neg_step_size, bias_correction2_sqrt, eps, weight_decay, decay_factor;
  bool decoupled;
  // Whether the largest term a flush removes from the denominator, sqrt(smallest normal) /
  // bias_correction2_sqrt, is under half a float step of eps: then the denominator rounds the same.
  bool flush_is_invisible;

  // ``keras_epsilon``: Keras adds eps to sqrt(v) where ATen adds it to sqrt(v) / sqrt(1 - beta2^t);
  // ATen's formula with eps / sqrt(1 - beta2^t) is Keras's update.
  AdamArithmetic(double step, double lr, double beta1, double beta2_, double weight_decay_, double eps_,
                 bool decoupled_, bool keras_epsilon = false) {
    // As ATen: coefficients in double, each cast to float where it is used.
    const float weight = static_cast<float>(1 - beta1);
    const bool small = std::abs(weight) < 0.5f;  // lerp from the average, else from the gradient
    lerp_weight = small ? weight : weight - 1.0f;
    lerp_base_is_average = small;
    beta2 = static_cast<float>(beta2_);
    square_weight = static_cast<float>(1 - beta2_);
    neg_step_size = static_cast<float>(-(lr / (1 - std::pow(beta1, step))));
    const double correction = std::sqrt(1 - std::pow(beta2_, step));
    if (keras_epsilon) eps_ /= correction;
    bias_correction2_sqrt = static_cast<float>(correction);
    flush_is_invisible = eps_ * 0x1p-25 > std::sqrt(static_cast<double>(FLT_MIN)) / correction;
    eps = static_cast<float>(eps_);
    weight_decay = static_cast<float>(weight_decay_);
    decay_factor = static_cast<float>(std::fma(-lr, weight_decay_, 1.0));  // ATen's compiler fused 1 - lr * wd
    decoupled = decoupled_;
  }
};

#define HPCTRAIN_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))

template <class Vec>
struct Lanes;

template <>
struct Lanes<__m512> {
  static constexpr int64_t width = 16;
  HPCTRAIN_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  HPCTRAIN_AVX512 static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  HPCTRAIN_AVX512 static __m512 all(float x) { return _mm512_set1_ps(x); }
  HPCTRAIN_AVX512 static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  HPCTRAIN_AVX512 static __m512 sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
  HPCTRAIN_AVX512 static __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
  HPCTRAIN_AVX512 static __m512 div(__m512 a, __m512 b) { return _mm512_div_ps(a, b); }
  HPCTRAIN_AVX512 static __m512 fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
  HPCTRAIN_AVX512 static __m512 sqrt(__m512 a) { return _mm512_sqrt_ps(a); }
};

template <>
struct Lanes<__m256> {
  static constexpr int64_t width = 8;
  HPCTRAIN_AVX512 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  HPCTRAIN_AVX512 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  HPCTRAIN_AVX512 static __m256 all(float x) { return _mm256_set1_ps(x); }
  HPCTRAIN_AVX512 static __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
  HPCTRAIN_AVX512 static __m256 sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
  HPCTRAIN_AVX512 static __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
  HPCTRAIN_AVX512 static __m256 div(__m256 a, __m256 b) { return _mm256_div_ps(a, b); }
  HPCTRAIN_AVX512 static __m256 fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
  HPCTRAIN_AVX512 static __m256 sqrt(__m256 a) { return _mm256_sqrt_ps(a); }
};

// ATen's vectorized body: ``count`` floats from ``first``, a multiple of the lane width.
template <class Vec>
HPCTRAIN_AVX512 void adam_lanes(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t first,
                                int64_t count, const AdamArithmetic& k) {
  using L = Lanes<Vec>;
  const Vec lerp_weight = L::all(k.lerp_weight), beta2 = L::all(k.beta2), square_weight = L::all(k.square_weight),
            neg_step = L::all(k.neg_step_size), correction = L::all(k.bias_correction2_sqrt), eps = L::all(k.eps),
            weight_decay = L::all(k.weight_decay), decay_factor = L::all(k.decay_factor);
  for (int64_t i = first; i < first + count; i += L::width) {
    Vec p = L::load(param + i), g = L::load(grad + i), m = L::load(exp_avg + i);
    if (k.weight_decay != 0.f) {
      if (k.decoupled) p = L::mul(p, decay_factor);
      else g = L::fma(p, weight_decay, g);
    }
    m = L::fma(lerp_weight, L::sub(g, m), k.lerp_base_is_average ? m : g);
    const Vec v = L::fma(L::mul(square_weight, g), g, L::mul(L::load(exp_avg_sq + i), beta2));
    L::store(exp_avg + i, m);
    L::store(exp_avg_sq + i, v);
    const Vec denominator = L::add(L::div(L::sqrt(v), correction), eps);
    L::store(param + i, L::add(p, L::div(L::mul(neg_step, m), denominator)));
  }
}

// ATen's scalar remainder, one float at a time.
void adam_scalars(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t first, int64_t count,
                  const AdamArithmetic& k) {
  for (int64_t i = first; i < first + count; ++i) {
    float g = grad[i];
    if (k.weight_decay != 0.f) {
      if (k.decoupled) param[i] = param[i] * k.decay_factor;
      else g = std::fma(param[i], k.weight_decay, g);
    }
    const float m = std::fma(k.lerp_weight, g - exp_avg[i], k.lerp_base_is_average ? exp_avg[i] : g);
    const float square = k.square_weight * g * g;
    const float v = std::fma(exp_avg_sq[i], k.beta2, square);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = param[i] + k.neg_step_size * m / (std::sqrt(v) / k.bias_correction2_sqrt + k.eps);
  }
}

constexpr int64_t kAdamSerialBelow = 1 << 14;  // floats; below this a fork/join costs more than it saves

// Subnormal operands and results take microcode assists: weights whose gradient stays zero (a
// dead ReLU unit, a pixel that is always blank) have moments that decay into the subnormal range
// and stay there (0.9 x 4 units of the smallest subnormal rounds back to 4 units); in the seed
// benchmark's training nearly every first moment was one, and the update took ~1.7x as long.
// Within the update they are flushed to zero, as TensorFlow's CPU kernels do everywhere; a moment
// that small moves a weight by at most ~1e-38 x lr / eps, nothing unless the weight is itself
// near zero. In the denominator sqrt(v) / bias_correction2_sqrt + eps a flushed second moment is
// invisible only while eps is large enough (AdamArithmetic::flush_is_invisible); below that
// ATen's kernel runs.
// The thread's previous mode is restored.
class FlushSubnormals {
 public:
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kSubnormalsAreZero); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned int kFlushToZero = 0x8000, kSubnormalsAreZero = 0x0040;
  const unsigned int saved_;
};

void adam_tensor(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                 const at::Tensor& exp_avg_sq, const AdamArithmetic& k) {
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const int64_t n = param.numel(), blocks = n / 16;
  auto body = [&](int64_t begin, int64_t end) {
    FlushSubnormals flush;
    adam_lanes<__m512>(p, g, m, v, begin * 16, (end - begin) * 16, k);
  };
  if (n < kAdamSerialBelow) body(0, blocks);
  else at::parallel_for(0, blocks, kAdamSerialBelow / 32, body);
  FlushSubnormals flush;
  const int64_t eights = (n % 16) / 8 * 8;
  adam_lanes<__m256>(p, g, m, v, blocks * 16, eights, k);
  adam_scalars(p, g, m, v, blocks * 16 + eights, n % 8, k);
}

bool own_adam_applies(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs) {
  if (!avx512_build() || !contiguous_floats(params) || !contiguous_floats(grads) || !contiguous_floats(exp_avgs) ||
      !contiguous_floats(exp_avg_sqs))
    return false;
  for (size_t i = 0; i < params.size(); ++i)
    if (grads[i].numel() != params[i].numel() || exp_avgs[i].numel() != params[i].numel() ||
        exp_avg_sqs[i].numel() != params[i].numel())
      return false;
  return true;
}

// torch._fused_adam_ / _fused_adamw_ (amsgrad and maximize off) with ``found`` nonzero skipping it.
void adam_update(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList steps, double lr, double beta1, double beta2, double weight_decay, double eps,
                 bool decoupled, const at::Tensor& found, bool keras_epsilon) {
  TORCH_CHECK(grads.size() == params.size() && exp_avgs.size() == params.size() &&
                  exp_avg_sqs.size() == params.size() && steps.size() == params.size(),
              "adam_update: one gradient, moment pair and step count per parameter");
  bool own = own_adam_applies(params, grads, exp_avgs, exp_avg_sqs) && contiguous_floats({found}) &&
             found.numel() == 1;
  std::vector<AdamArithmetic> arithmetic;  // per tensor: its step count may differ
  for (size_t i = 0; own && i < steps.size(); ++i) {
    arithmetic.emplace_back(steps[i].item<float>(), lr, beta1, beta2, weight_decay, eps, decoupled, keras_epsilon);
    own = arithmetic.back().flush_is_invisible;
  }
  if (!own && keras_epsilon && !steps.empty())  // ATen's kernel takes one eps: the first tensor's step's
    eps /= std::sqrt(1 - std::pow(beta2, static_cast<double>(steps[0].item<float>())));
  if (!own) {
    if (decoupled)
      at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2, weight_decay, eps, false,
                        false, std::nullopt, found);
    else
      at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2, weight_decay, eps, false,
                       false, std::nullopt, found);
    return;
  }
  if (*found.data_ptr<float>() == 1.f) return;  // ATen's rule: a flag of 1 skips the update
  for (size_t i = 0; i < params.size(); ++i)
    adam_tensor(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], arithmetic[i]);
}

// ---- the non-finite check and the step's counters ----------------------------------------------
//
// ATen's _amp_foreach_non_finite_check_and_unscale_ with a scale of one (what the Python loop
// calls) reads every gradient and writes it back times one, in a fork/join; reading alone,
// vectorized, raises the same flag. Like ATen's, the flag is sticky: once up, later steps are not
// scanned. The flag, the bad-step count and the step counters are host scalars, updated through
// their pointers instead of one ATen call each.

HPCTRAIN_AVX512 bool floats_have_non_finite(const float* x, int64_t n) {
  const __m512i exponent = _mm512_set1_epi32(0x7f800000);  // all ones: inf or NaN
  __mmask16 found = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    found |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_loadu_si512(x + i), exponent), exponent);
  const __mmask16 rest = static_cast<__mmask16>((1u << (n - i)) - 1);
  found |= _mm512_mask_cmpeq_epi32_mask(rest, _mm512_and_si512(_mm512_maskz_loadu_epi32(rest, x + i), exponent),
                                        exponent);
  return found != 0;
}

constexpr int64_t kScanSerialBelow = 1 << 17;  // floats

bool has_non_finite(const at::Tensor& t) {
  const float* x = t.data_ptr<float>();
  const int64_t n = t.numel();
  if (n < kScanSerialBelow) return floats_have_non_finite(x, n);
  std::atomic<bool> found{false};
  at::parallel_for(0, n, kScanSerialBelow / 2, [&](int64_t begin, int64_t end) {
    if (floats_have_non_finite(x + begin, end - begin)) found = true;
  });
  return found;
}

// Whether any value of these contiguous float32 tensors is inf or NaN.
bool any_non_finite(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (has_non_finite(t)) return true;
  return false;
}

struct HostCounters {
  float* found;
  float* bad;
  std::vector<float*> steps;

  // Null ``found`` where any of them is not a float32 scalar on the host: ATen's calls then.
  HostCounters(const at::Tensor& found_inf, const at::Tensor& bad_steps, at::TensorList counters) : found(nullptr) {
    if (!contiguous_floats({found_inf, bad_steps}) || found_inf.numel() != 1 || bad_steps.numel() != 1) return;
    for (const at::Tensor& counter : counters) {
      if (!contiguous_floats({counter}) || counter.numel() != 1) return;
      steps.push_back(counter.data_ptr<float>());
    }
    found = found_inf.data_ptr<float>();
    bad = bad_steps.data_ptr<float>();
  }

  // The check, then bad += found and each counter += 1, as the Python loop's calls do.
  void check_and_count(at::TensorList checked) {
    if (*found != 1.f && any_non_finite(checked)) *found = 1.f;
    *bad += *found;
    for (float* step : steps) *step += 1.f;
  }
};

// run_steps's parameters besides the program and the batches: the fused Adam update's tensors and
// hyperparameters, and the non-finite check's. From Python they come as one list of tensors, the
// length of each group in it and the numbers (engine/native/__init__.py, StepLoop.state, bound once
// per update): a TorchScript class object passed from Python cost ~2x the call of 23 arguments.
struct StepState {
  // The groups of ``tensors``, in this order, ``lengths`` tensors each.
  at::TensorList params, grads, exp_avgs, exp_avg_sqs, steps;  // as torch._fused_adam_ takes them
  at::TensorList counters;  // the step counters each step adds one to
  at::TensorList checked;  // the gradients checked for inf and NaN, where not those handed to the update
  // Then one each: the guard's sticky flag, a one, the count of bad steps.
  at::Tensor found_inf, one, bad_steps;
  // ``numbers``, in this order.
  double lr, beta1, beta2, weight_decay, eps;
  bool decoupled;  // AdamW's decay
  bool check_handed;  // check the gradients handed to the update, not ``checked``
  bool keras_epsilon;  // eps where Keras's Adam adds it (AdamArithmetic)

  StepState(at::TensorList tensors, at::IntArrayRef lengths, at::ArrayRef<double> numbers) {
    TORCH_CHECK(lengths.size() == 7 && numbers.size() == 8, "run_steps: 7 groups of tensors and 8 numbers");
    at::TensorList* groups[] = {&params, &grads, &exp_avgs, &exp_avg_sqs, &steps, &counters, &checked};
    size_t first = 0;
    for (size_t i = 0; i < 7; ++i) {
      TORCH_CHECK(lengths[i] >= 0 && first + lengths[i] <= tensors.size(), "run_steps: group lengths");
      *groups[i] = tensors.slice(first, lengths[i]);
      first += lengths[i];
    }
    TORCH_CHECK(tensors.size() == first + 3, "run_steps: found_inf, one and bad_steps after the groups");
    found_inf = tensors[first], one = tensors[first + 1], bad_steps = tensors[first + 2];
    lr = numbers[0], beta1 = numbers[1], beta2 = numbers[2], weight_decay = numbers[3], eps = numbers[4];
    decoupled = numbers[5] != 0, check_handed = numbers[6] != 0, keras_epsilon = numbers[7] != 0;
  }
};

// Runs ``sizes.size()`` steps on consecutive batches of ``x`` (``y``, ``logits``) of ``sizes[k]``
// rows each; each step: the program, the non-finite check, the step counter, the fused update.
// Returns the gradients the last update took (``handed`` slots replaced by the program).
std::vector<at::Tensor> run_steps(at::TensorList bound, at::IntArrayRef code_ref, const at::Tensor& x,
                                  const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& logits,
                                  at::IntArrayRef sizes, at::TensorList state_tensors, at::IntArrayRef lengths,
                                  at::ArrayRef<double> numbers) {
  const StepState s(state_tensors, lengths, numbers);
  std::vector<at::Tensor> table(bound.begin(), bound.end());  // its per-batch and per-step slots rebound below
  std::vector<at::Tensor> handed(s.grads.begin(), s.grads.end());
  const std::vector<int64_t> code(code_ref.begin(), code_ref.end());
  const at::Tensor z_default = table[kZ];
  at::Tensor found = s.found_inf, bad = s.bad_steps;
  Interpreter interpreter{table, handed};
  HostCounters host(found, bad, s.counters);
  int64_t first = 0;
  for (int64_t rows : sizes) {
    table[kX] = x.narrow(0, first, rows);
    if (y) table[kY] = y->narrow(0, first, rows);
    table[kZ] = logits ? logits->narrow(0, first, rows) : z_default;
    first += rows;
    interpreter.run(code, rows);
    const at::TensorList check = s.check_handed ? at::TensorList(handed) : at::TensorList(s.checked);
    if (host.found && avx512_build() && contiguous_floats(check)) {
      host.check_and_count(check);
    } else {
      at::_amp_foreach_non_finite_check_and_unscale_(check, found, s.one);
      bad.add_(found);
      if (s.counters.size() == 1) s.counters[0].add_(s.one);
      else at::_foreach_add_(s.counters, s.one);
    }
    adam_update(s.params, handed, s.exp_avgs, s.exp_avg_sqs, s.steps, s.lr, s.beta1, s.beta2, s.weight_decay, s.eps,
                s.decoupled, found, s.keras_epsilon);
  }
  return handed;
}

}  // namespace

TORCH_LIBRARY(hpctrain_native, m) {
  m.def("run_steps(Tensor[] table, int[] code, Tensor x, Tensor? y, Tensor? logits, int[] sizes, Tensor[] state, "
        "int[] lengths, float[] numbers) -> Tensor[]");
  m.def("adam_update(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor[] steps, float lr, float beta1, float beta2, float weight_decay, float eps, bool decoupled, "
        "Tensor found_inf, bool keras_epsilon=False) -> ()");
  m.def("any_non_finite(Tensor[] tensors) -> bool");
}

TORCH_LIBRARY_IMPL(hpctrain_native, CPU, m) {
  m.impl("run_steps", run_steps);
  m.impl("adam_update", adam_update);
  m.impl("any_non_finite", [](at::TensorList tensors) {
    TORCH_CHECK(avx512_build() && contiguous_floats(tensors), "any_non_finite: contiguous float32 tensors, AVX-512");
    return any_non_finite(tensors);
  });
}
