// 2x2 max pooling with stride 2 on channels-last float32 images, forward and backward, for the
// native forward of Keras models (hpctrain/keras/native_forward.py).
//
// ATen's channels-last max pooling keeps an int64 index per output value and its backward first
// zero-fills the whole input gradient, then scatters into it. Here each output keeps which of its
// window's four values won (one byte), and the backward writes every input-gradient value once,
// the winner's gradient or zero: on the Keras MNIST convnet, its two poolings forward and backward
// take 1.8 ms per step against 3.0-3.9 ms with ATen's on two AVX-512 cores
// (benchmarks/results/keras_models_profile.txt). The values and gradients are ATen's exactly: the first
// of equal maxima in the window's row-major order wins, and a NaN wins as in ATen.
//
// ``max_pool2x2_relu`` is ReLU of the pooled values in the same pass (the native forward pools a
// conv+ReLU's output before its ReLU: max and ReLU commute). An output ReLU zeroes gets winner 4,
// which the backward matches to no input: ReLU's backward (zero where the output is <= 0) and the
// pooling's in one write. A NaN output keeps its winner, as ReLU's backward passes NaN's gradient.
//
// Layout: x is (N, C, H, W) in channels-last memory, i.e. (N, H, W, C) contiguous; outputs use
// the same layout. H or W odd: the last row or column is left out (floor), as Keras's "valid"
// pooling does, and its gradient is zero.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>

namespace {

// One build for AVX-512, one for AVX2 and a plain one, picked at load time by the CPU: the
// extension is compiled without -march, which alone would leave these loops on SSE2.
#define HPCTRAIN_POOL_KERNEL __attribute__((target_clones("arch=skylake-avx512", "avx2", "default"), optimize("O3")))

// One output row: ``top`` is the first of the window's two input rows.
constexpr uint8_t kNoWinner = 4;  // ReLU zeroed the output: no input gets its gradient

HPCTRAIN_POOL_KERNEL void pool_row(const float* top, float* out, uint8_t* winner, int64_t width, int64_t out_width,
                                   int64_t channels, bool relu) {
  for (int64_t wo = 0; wo < out_width; ++wo) {
    const float* a = top + 2 * wo * channels;
    const float* b = a + channels;
    const float* c = a + width * channels;
    const float* d = c + channels;
    float* o = out + wo * channels;
    uint8_t* w = winner + wo * channels;
    for (int64_t k = 0; k < channels; ++k) {
      float best = a[k];
      uint8_t which = 0;
      // ``v != v``: NaN takes the window, as in ATen's kernel.
      if (b[k] > best || b[k] != b[k]) { best = b[k]; which = 1; }
      if (c[k] > best || c[k] != c[k]) { best = c[k]; which = 2; }
      if (d[k] > best || d[k] != d[k]) { best = d[k]; which = 3; }
      const bool zeroed = relu && best <= 0.0f;
      o[k] = zeroed ? 0.0f : best;
      w[k] = zeroed ? kNoWinner : which;
    }
  }
}

// One input-gradient row, ``first`` 0 for a window's top row and 2 for its bottom one.
HPCTRAIN_POOL_KERNEL void unpool_row(const float* grad, const uint8_t* winner, float* row, int64_t out_width,
                                     int64_t channels, uint8_t first) {
  const uint8_t second = first + 1;
  for (int64_t wo = 0; wo < out_width; ++wo) {
    const float* g = grad + wo * channels;
    const uint8_t* w = winner + wo * channels;
    float* left = row + 2 * wo * channels;
    float* right = left + channels;
    for (int64_t k = 0; k < channels; ++k) {
      left[k] = w[k] == first ? g[k] : 0.0f;
      right[k] = w[k] == second ? g[k] : 0.0f;
    }
  }
}

at::Tensor nhwc(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              what, " must be a 4-d float32 CPU tensor");
  at::Tensor view = x.permute({0, 2, 3, 1});
  TORCH_CHECK(view.is_contiguous(), what, " must be in channels-last memory");
  return view;
}

std::tuple<at::Tensor, at::Tensor> pool(const at::Tensor& input, bool relu) {
  const at::Tensor x = nhwc(input, "max_pool2x2's input");
  const int64_t n = x.size(0), height = x.size(1), width = x.size(2), channels = x.size(3);
  const int64_t out_height = height / 2, out_width = width / 2;
  // (N, C, H, W) in channels-last memory, made so rather than as a permuted view: a view would
  // stop autograd from letting the next op (ReLU) work in place on it.
  at::Tensor out = at::empty({n, channels, out_height, out_width}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor winner = at::empty({n, out_height, out_width, channels}, x.options().dtype(at::kByte));
  const float* source = x.data_ptr<float>();
  float* target = out.data_ptr<float>();
  uint8_t* winners = winner.data_ptr<uint8_t>();
  const int64_t row = out_width * channels;
  at::parallel_for(0, n * out_height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t image = r / out_height, ho = r % out_height;
      pool_row(source + (image * height + 2 * ho) * width * channels, target + r * row, winners + r * row, width,
               out_width, channels, relu);
    }
  });
  return {out, winner};
}

std::tuple<at::Tensor, at::Tensor> max_pool2x2(const at::Tensor& input) { return pool(input, false); }

std::tuple<at::Tensor, at::Tensor> max_pool2x2_relu(const at::Tensor& input) { return pool(input, true); }

at::Tensor max_pool2x2_backward(const at::Tensor& grad_output, const at::Tensor& winner, int64_t height,
                                int64_t width) {
  const at::Tensor grad = nhwc(grad_output.contiguous(at::MemoryFormat::ChannelsLast), "the output gradient");
  const int64_t n = grad.size(0), out_height = grad.size(1), out_width = grad.size(2), channels = grad.size(3);
  TORCH_CHECK(winner.is_contiguous() && winner.scalar_type() == at::kByte && winner.sizes() == grad.sizes(),
              "max_pool2x2_backward takes the winners max_pool2x2 returned");
  TORCH_CHECK(height / 2 == out_height && width / 2 == out_width, "the input size does not match the output's");
  at::Tensor grad_input = at::empty({n, channels, height, width}, grad.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* g = grad.data_ptr<float>();
  const uint8_t* winners = winner.data_ptr<uint8_t>();
  float* target = grad_input.data_ptr<float>();
  const int64_t out_row = out_width * channels, in_row = width * channels;
  at::parallel_for(0, n * height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t image = r / height, h = r % height, ho = h / 2;
      float* row = target + r * in_row;
      if (ho >= out_height) {  // the row an odd height leaves out
        std::fill(row, row + in_row, 0.0f);
        continue;
      }
      const int64_t source = (image * out_height + ho) * out_row;
      unpool_row(g + source, winners + source, row, out_width, channels, static_cast<uint8_t>(2 * (h % 2)));
      std::fill(row + 2 * out_row, row + in_row, 0.0f);  // the column an odd width leaves out
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hpctrain_native, m) {
  m.def("max_pool2x2(Tensor input) -> (Tensor, Tensor)");
  m.def("max_pool2x2_relu(Tensor input) -> (Tensor, Tensor)");
  m.def("max_pool2x2_backward(Tensor grad_output, Tensor winner, int height, int width) -> Tensor");
}

TORCH_LIBRARY_IMPL(hpctrain_native, CPU, m) {
  m.impl("max_pool2x2", max_pool2x2);
  m.impl("max_pool2x2_relu", max_pool2x2_relu);
  m.impl("max_pool2x2_backward", max_pool2x2_backward);
}
