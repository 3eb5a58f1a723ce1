#include "shapley.h"

#include <c10/util/Exception.h>

#include <string>

namespace fastshap {

Benefit parse_benefit(c10::string_view name) {
  if (name == "paper") return Benefit::Paper;
  if (name == "accuracy") return Benefit::Accuracy;
  if (name == "probability") return Benefit::Probability;
  TORCH_CHECK_VALUE(false, "fastshap: unknown benefit '", std::string(name),
                    "'; expected 'paper', 'accuracy' or 'probability'");
}

ShapleyCoefficients shapley_coefficients(int64_t n) {
  TORCH_CHECK_VALUE(n >= 1 && n <= kMaxModalities, "fastshap: n must be in [1, ", kMaxModalities, "], got ", n);
  std::array<double, kMaxModalities + 1> fact{};
  fact[0] = 1.0;
  for (int64_t k = 1; k <= kMaxModalities; ++k) fact[k] = fact[k - 1] * static_cast<double>(k);
  ShapleyCoefficients c;
  c.n_factorial = fact[n];
  for (int64_t s = 0; s <= n; ++s) {
    c.in[s] = s >= 1 ? fact[s - 1] * fact[n - s] : 0.0;
    c.out[s] = s <= n - 1 ? fact[s] * fact[n - 1 - s] : 0.0;
  }
  return c;
}

void check_param(const at::Tensor& param, const char* what, const at::Tensor& features0) {
  TORCH_CHECK_VALUE(param.device() == features0.device(), "fastshap: ", what, " is on ", param.device(),
                    ", features on ", features0.device());
  TORCH_CHECK_VALUE(at::isFloatingType(param.scalar_type()), "fastshap: ", what, " must be floating point, got ",
                    param.scalar_type());
}

ProblemShape check_common(at::TensorList features, const at::Tensor& first_layer, at::TensorList baselines,
                          const at::Tensor& labels) {
  ProblemShape p;
  p.n = static_cast<int64_t>(features.size());
  TORCH_CHECK_VALUE(p.n >= 1 && p.n <= kMaxModalities, "fastshap: between 1 and ", kMaxModalities,
                    " modalities are supported exactly, got ", p.n);
  const auto& f0 = features[0];
  TORCH_CHECK_VALUE(at::isFloatingType(f0.scalar_type()), "fastshap: features must be floating point, got ",
                    f0.scalar_type());
  p.batch = f0.dim() == 2 ? f0.size(0) : -1;
  for (int64_t i = 0; i < p.n; ++i) {
    const auto& f = features[i];
    TORCH_CHECK_VALUE(f.dim() == 2, "fastshap: features[", i, "] must be (B, d), got shape ", f.sizes());
    TORCH_CHECK_VALUE(f.size(0) == p.batch, "fastshap: features[", i, "] has batch ", f.size(0),
                      ", features[0] has ", p.batch);
    TORCH_CHECK_VALUE(f.scalar_type() == f0.scalar_type(), "fastshap: features[", i, "] is ", f.scalar_type(),
                      ", features[0] is ", f0.scalar_type());
    TORCH_CHECK_VALUE(f.device() == f0.device(), "fastshap: features[", i, "] is on ", f.device(),
                      ", features[0] on ", f0.device());
    p.offsets.push_back(p.total_dim);
    p.dims.push_back(f.size(1));
    p.total_dim += f.size(1);
  }
  TORCH_CHECK_VALUE(first_layer.dim() == 2 && first_layer.size(1) == p.total_dim,
                    "fastshap: head weight must be (K, ", p.total_dim, ") for features of total width ",
                    p.total_dim, ", got ", first_layer.sizes());
  check_param(first_layer, "the head weight", f0);
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == p.batch, "fastshap: labels must be (", p.batch,
                    ",), got ", labels.sizes());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, "fastshap: labels must be int64, got ",
                    labels.scalar_type());
  TORCH_CHECK_VALUE(labels.device() == f0.device(), "fastshap: labels are on ", labels.device(),
                    ", features on ", f0.device());
  if (!baselines.empty()) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(baselines.size()) == p.n, "fastshap: ", baselines.size(),
                      " baselines for ", p.n, " modalities");
    // All shared (d_i,) or all per-sample (B, d_i): baselines[0] says which.
    const bool shared = baselines[0].dim() == 1;
    p.baseline_rows = shared ? 1 : p.batch;
    for (int64_t i = 0; i < p.n; ++i) {
      const auto& b = baselines[i];
      const bool ok = shared ? b.dim() == 1 && b.size(0) == p.dims[i]
                             : b.dim() == 2 && b.size(0) == p.batch && b.size(1) == p.dims[i];
      if (i == 0) {
        TORCH_CHECK_VALUE(ok, "fastshap: baselines[0] must be (", p.dims[0], ",) or (", p.batch, ", ", p.dims[0],
                          "), got ", b.sizes());
      }
      TORCH_CHECK_VALUE(ok, "fastshap: baselines[", i, "] must be (", shared ? "" : std::to_string(p.batch) + ", ",
                        p.dims[i], shared ? ",)" : ")", ": baselines are all shared (d_i,) or all per-sample (B, d_i), "
                        "as baselines[0] is; got ", b.sizes());
      TORCH_CHECK_VALUE(b.scalar_type() == f0.scalar_type() && b.device() == f0.device(), "fastshap: baselines[",
                        i, "] must match the features' dtype and device");
    }
  }
  return p;
}

}  // namespace fastshap
