// One thread's share of fastshap::shapley_sampled on CUDA: the walks of one sample for one group of
// antithetic pairs (fastshap/sampling.py: the estimator and its canonical computation). Written for the host
// too, so that the tests run this very code on the CPU (cuda/sampling_emulate.cpp: every thread of a launch,
// one after the other), where no GPU is available to run the kernel.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define FASTSHAP_HD __host__ __device__
#else
#define FASTSHAP_HD
#endif

namespace fastshap {
namespace sampled {

enum : int { kPaper = 0, kAccuracy = 1, kProbability = 2 };

template <typename T>
struct WalkArgs {
  const T* delta;         // (n, K, B) contiguous: what modality i adds to a walk's scores when it joins
  const T* empty;         // (K, E) contiguous: score(empty), one shared column (E = 1) or one per sample
  const T* full;          // (K, B) contiguous: score(N)
  const int64_t* labels;  // (B,) in [0, K)
  const int64_t* orders;  // (P, 2, n) contiguous permutations: walk (p, k) adds orders[p, k, j] at step j
  T* sums;                // (K, G * B): the running scores, one column per (group, sample) thread
  double* scratch;        // (G, B, n): the first walk's marginals of the pair a thread is walking
  double* first;          // (G, B, n), zeros: sums of the pair draws of each group
  double* second;         // (G, B, n), zeros: sums of their squares
  int64_t B, n, K, P, E, groups, pairs_per_group;
  int benefit;  // kPaper, kAccuracy, kProbability
  int mean_of;  // n for decision fusion (its probability is the mean of the summed ones), else 0
};

template <typename T>
FASTSHAP_HD inline bool finite(T x) {
  return x - x == T(0);  // NaN and +-Inf give NaN
}

// v(S) of a coalition of `size` modalities from its K scores s[c * stride]: paper |S| * correct, accuracy
// correct, probability softmax(s)[y] (decision fusion: s[y] / n), NaN when a score is not finite; correct is
// torch.argmax's first maximal index.
template <typename T>
FASTSHAP_HD inline double coalition_value(const T* s, int64_t stride, int64_t K, int64_t label, int64_t size,
                                          int benefit, int mean_of) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (benefit == kPaper && size == 0) return 0.0;
  bool ok = true;
  for (int64_t c = 0; c < K; ++c) ok = ok && finite(s[c * stride]);
  if (!ok) return nan;
  const T mine = s[label * stride];
  if (benefit == kProbability) {
    if (mean_of > 0) return static_cast<double>(mine) / static_cast<double>(mean_of);
    double top = static_cast<double>(s[0]);
    for (int64_t c = 1; c < K; ++c) top = fmax(top, static_cast<double>(s[c * stride]));
    double total = 0.0;
    for (int64_t c = 0; c < K; ++c) total += exp(static_cast<double>(s[c * stride]) - top);
    return exp(static_cast<double>(mine) - top) / total;
  }
  bool correct = true;
  for (int64_t c = 0; c < label; ++c) correct = correct && s[c * stride] < mine;
  for (int64_t c = label + 1; c < K; ++c) correct = correct && !(s[c * stride] > mine);
  if (!correct) return 0.0;
  return benefit == kPaper ? static_cast<double>(size) : 1.0;
}

// Thread (g, b): sample b's walks of the pairs of group g.
template <typename T>
FASTSHAP_HD inline void walk_thread(const WalkArgs<T>& a, int64_t g, int64_t b) {
  const int64_t n = a.n, K = a.K, B = a.B;
  const int64_t stride = a.groups * B;
  T* s = a.sums + g * B + b;
  const int64_t label = a.labels[b];
  const T* empty = a.empty + (a.E == 1 ? 0 : b);
  const double v_full = coalition_value(a.full + b, B, K, label, n, a.benefit, a.mean_of);
  const double v_empty = coalition_value(empty, a.E, K, label, 0, a.benefit, a.mean_of);
  const int64_t own = (g * B + b) * n;
  const int64_t begin = g * a.pairs_per_group;
  const int64_t end = begin + a.pairs_per_group < a.P ? begin + a.pairs_per_group : a.P;
  for (int64_t p = begin; p < end; ++p) {
    for (int64_t k = 0; k < 2; ++k) {
      const int64_t* order = a.orders + (p * 2 + k) * n;
      for (int64_t c = 0; c < K; ++c) s[c * stride] = empty[c * a.E];
      double previous = v_empty;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t player = order[j];
        if (player < 0 || player >= n) return;  // a memory guard: the host checks the orders
        double value = v_full;
        if (j + 1 < n) {
          const T* d = a.delta + player * K * B + b;
          for (int64_t c = 0; c < K; ++c) s[c * stride] = s[c * stride] + d[c * B];
          value = coalition_value(s, stride, K, label, j + 1, a.benefit, a.mean_of);
        }
        const double marginal = value - previous;
        previous = value;
        if (k == 0) {
          a.scratch[own + player] = marginal;
        } else {
          const double draw = (a.scratch[own + player] + marginal) * 0.5;
          a.first[own + player] += draw;
          a.second[own + player] += draw * draw;
        }
      }
    }
  }
}

}  // namespace sampled
}  // namespace fastshap
