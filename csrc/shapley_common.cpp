#include "shapley.h"

#include <c10/util/Exception.h>

#include <array>
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

namespace {

void check_param(const at::Tensor& param, const char* what, const at::Tensor& features0) {
  TORCH_CHECK_VALUE(param.device() == features0.device(), "fastshap: ", what, " is on ", param.device(),
                    ", features on ", features0.device());
  TORCH_CHECK_VALUE(at::isFloatingType(param.scalar_type()), "fastshap: ", what, " must be floating point, got ",
                    param.scalar_type());
}

std::string kind_names() {
  std::string names;
  for (const HeadKind& kind : kHeadKinds) names += std::string(names.empty() ? "'" : ", '") + kind.name + "'";
  return names;
}

// "(C, H) = (C, 8)": the shape's symbols, then their values where known.
std::string expected_shape(const char* dims, const std::array<int64_t, 128>& value) {
  std::string symbols, values;
  for (const char* d = dims; *d != '\0'; ++d) {
    const std::string sep = d == dims ? "" : ", ";
    symbols += sep + *d;
    const int64_t known = value[static_cast<unsigned char>(*d)];
    values += sep + (known >= 0 ? std::to_string(known) : std::string(1, *d));
  }
  const std::string one = dims[1] == '\0' ? "," : "";
  return "(" + symbols + one + ") = (" + values + one + ")";
}

}  // namespace

ProblemShape check_common(at::TensorList features, at::TensorList baselines, const at::Tensor& labels,
                          int64_t max_modalities) {
  ProblemShape p;
  p.n = static_cast<int64_t>(features.size());
  TORCH_CHECK_VALUE(p.n >= 1 && p.n <= max_modalities, "fastshap: between 1 and ", max_modalities,
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
                        p.dims[i], shared ? ",)" : ")", " (all shared (d_i,) or all per-sample (B, d_i), as "
                        "baselines[0]), got ", b.sizes());
      TORCH_CHECK_VALUE(b.device() == f0.device(), "fastshap: baselines[", i, "] is on ", b.device(),
                        ", features on ", f0.device());
      TORCH_CHECK_VALUE(b.scalar_type() == f0.scalar_type(), "fastshap: baselines[", i, "] is ", b.scalar_type(),
                        ", features are ", f0.scalar_type());
    }
  }
  return p;
}

HeadShape check_head(c10::string_view head, at::TensorList params, const ProblemShape& p,
                     const at::Tensor& features0) {
  HeadShape h;
  for (const HeadKind& kind : kHeadKinds) {
    if (head == kind.name) h.kind = &kind;
  }
  TORCH_CHECK_VALUE(h.kind != nullptr, "fastshap: unknown head kind '", std::string(head), "'; expected ",
                    kind_names());
  const HeadKind& kind = *h.kind;
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == kind.num_params, "fastshap: the ", kind.name,
                    " head takes ", kind.num_params, " parameters, got ", params.size());
  std::array<int64_t, 128> value;  // by symbol; -1 until a dimension fixes it
  value.fill(-1);
  value['n'] = p.n;
  value['D'] = p.total_dim;
  for (int i = 0; i < kind.num_params; ++i) {
    const at::Tensor& param = params[i];
    const char* dims = kind.shapes[i];
    std::array<int64_t, 128> bound = value;  // the message shows what was known before this parameter
    bool ok = param.dim() == static_cast<int64_t>(std::char_traits<char>::length(dims));
    for (int64_t d = 0; ok && dims[d] != '\0'; ++d) {
      int64_t& known = bound[static_cast<unsigned char>(dims[d])];
      if (known < 0) known = param.size(d);
      ok = known == param.size(d);
    }
    TORCH_CHECK_VALUE(ok, "fastshap: ", kind.name, " ", kind.params[i], " must be ", expected_shape(dims, value),
                      ", got ", param.sizes());
    value = bound;
    check_param(param, kind.params[i], features0);
  }
  h.K = params[kind.first_layer].size(0);
  h.C = value['C'];
  return h;
}

std::string head_kinds_description() {
  std::string out;
  for (const HeadKind& kind : kHeadKinds) {
    out += (out.empty() ? "" : ";") + std::string(kind.name) + ":" + std::to_string(kind.code) + ":";
    for (int i = 0; i < kind.num_params; ++i) {
      out += (i ? "," : "") + std::string(kind.params[i]) + "=" + kind.shapes[i];
    }
    out += ":" + std::to_string(kind.first_layer);
  }
  return out;
}

}  // namespace fastshap
