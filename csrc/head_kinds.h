// The head kinds the kernels run, declared once for the C++ side: each kind's name (the op's `head`
// argument), its integer code (what the CUDA block program switches on) and its parameters in the order the
// op takes them, with their shapes in symbols: n modalities, D = sum d_i, C classes, H hidden units; a
// symbol's first occurrence fixes its value, the later ones must agree. The parameter at `first_layer` is the
// (K, D) matrix of the partial products.
//
// fastshap/head_kinds.py is the Python table with the same entries; torch.ops.fastshap.head_kinds() prints
// this one and tests/kernels/test_ops.py checks that the two agree. docs/internals.md lists the files that a
// new head kind touches.
//
// Plain constants only: the CUDA device code includes this header too.
#pragma once

namespace fastshap {

enum HeadCode : int { kConcat = 0, kDecision = 1, kMlp = 2 };

constexpr int kMaxHeadParams = 4;

struct HeadKind {
  const char* name;
  int code;
  int num_params;
  const char* params[kMaxHeadParams];
  const char* shapes[kMaxHeadParams];  // one symbol per dimension: "CD" is (C, D)
  int first_layer;
};

inline constexpr HeadKind kHeadKinds[] = {
    // logits(S) = bias + sum_i (i in S ? W_i h_i : W_i b_i)
    {"concat", kConcat, 2, {"weight", "bias"}, {"CD", "C"}, 0},
    // classifier i = (the columns of modality i of weight, bias row i); score = sum_i softmax(classifier_i)
    {"decision", kDecision, 2, {"weight", "bias"}, {"CD", "nC"}, 0},
    // logits(S) = weight2 relu(bias1 + sum_i (i in S ? W1_i h_i : W1_i b_i)) + bias2
    {"mlp", kMlp, 4, {"weight1", "bias1", "weight2", "bias2"}, {"HD", "H", "CH", "C"}, 0},
};

constexpr int kNumHeadKinds = static_cast<int>(sizeof(kHeadKinds) / sizeof(kHeadKinds[0]));

}  // namespace fastshap
