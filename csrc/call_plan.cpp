// The fast path of fastshap.modality_shapley (fastshap/_call_plan.py): a plan records what a checked call
// decided; plan_check verifies in one pass that a later call's head and arguments match it, and plan_run
// also runs the compiled op through one dispatcher call. These are Python functions of fastshap._C (the
// module's method table, call_plan.h); nothing else in the extension calls them.
//
// A plan holds the head by a weak reference and, for its layers, the dicts and objects that the per-call
// check compares (python side: fastshap._call_plan._probes): each dict's length, and each probed key mapped
// to the same object, or present. It holds the head's parameters as tensors (the same TensorImpls as the
// Parameters: an optimizer step or a `.data` swap is seen) with their shapes, strides, dtypes and devices at
// planning; their values are never part of a plan. Everything a check reads is metadata: no value of a
// tensor is read, and the checks never fail loudly: a mismatch answers None and the call takes the full
// path, which raises the user's errors.
#include "call_plan.h"

#include <ATen/Dispatch.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace fastshap {
namespace {

using at::Tensor;

constexpr const char* kCapsule = "fastshap.call_plan";

// Tensors with these keys are not plain dense tensors of their device: subclasses with __torch_dispatch__,
// functorch wrappers (vmap, grad), functionalization, lazy conjugation, sparse, nested, quantized layouts.
constexpr c10::DispatchKeySet kUnusualTensorKeys = c10::DispatchKeySet({
    c10::DispatchKey::Python,
    c10::DispatchKey::PythonTLSSnapshot,
    c10::DispatchKey::Functionalize,
    c10::DispatchKey::Conjugate,
    c10::DispatchKey::Negative,
    c10::DispatchKey::ZeroTensor,
    c10::DispatchKey::FuncTorchBatched,
    c10::DispatchKey::BatchedNestedTensor,
    c10::DispatchKey::Batched,
    c10::DispatchKey::FuncTorchGradWrapper,
    c10::DispatchKey::Sparse,
    c10::DispatchKey::SparseCsr,
    c10::DispatchKey::NestedTensor,
    c10::DispatchKey::Quantized,
    c10::DispatchKey::MkldnnCPU,
});

struct TensorMeta {
  std::vector<int64_t> sizes, strides;
  c10::ScalarType dtype;
  c10::Device device;
};

struct Probe {
  PyObject* dict;   // a dict (or a dict subclass: OrderedDict)
  PyObject* key;
  PyObject* value;  // the object it must map to, or nullptr: the key must be present
};

struct Plan {
  PyObject* head_ref = nullptr;   // weak reference to the head
  PyTypeObject* head_type = nullptr;
  std::vector<std::pair<PyObject*, PyTypeObject*>> types;  // layers under the head and their classes
  std::vector<std::pair<PyObject*, Py_ssize_t>> sizes;     // dicts and their lengths
  std::vector<Probe> probes;
  std::vector<PyObject*> owned;   // every strong reference above, released with the plan
  int64_t n = 0;
  std::vector<int64_t> dims;
  c10::ScalarType dtype = at::kFloat;
  c10::Device device{c10::kCPU};
  int baselines = 0;              // 0: none; 1: shared (d_i,); 2: per sample (B, d_i)
  bool offsets32 = false;         // feature and baseline column offsets must fit 32 bits (Triton)
  std::vector<Tensor> watched;    // the live parameters the decisions rest on
  std::vector<TensorMeta> metas;  // ... and their metadata at planning
  std::string kind, benefit;

  ~Plan() {
    for (PyObject* o : owned) Py_DECREF(o);
    Py_XDECREF(head_ref);
  }
};

PyObject* keep(Plan& plan, PyObject* o) {
  Py_INCREF(o);
  plan.owned.push_back(o);
  return o;
}

TensorMeta meta_of(const Tensor& t) {
  return {t.sizes().vec(), t.strides().vec(), t.scalar_type(), t.device()};
}

// A plain dense tensor (torch.Tensor or nn.Parameter, strided, no unusual dispatch key), else nullptr.
const Tensor* plain(PyObject* o) {
  if (!THPVariable_CheckExact(o)) return nullptr;
  const Tensor& t = THPVariable_Unpack(o);
  if (t.layout() != at::kStrided || t.key_set().has_any(kUnusualTensorKeys)) return nullptr;
  return &t;
}

// Nothing traces or transforms this call: no dispatch mode (FakeTensorMode, make_fx, functorch transforms
// include keys in the thread-local set), no torch-function mode.
bool untraced() {
  const auto tls = c10::impl::tls_local_dispatch_key_set();
  const auto extra = tls.included_ - c10::default_included_set - c10::autocast_dispatch_keyset;
  return extra.empty() && at::impl::PythonTorchFunctionTLS::stack_len() == 0;
}

// The object a weak reference points to (borrowed; Py_None once it is gone).
PyObject* referent(PyObject* ref) {
#if PY_VERSION_HEX >= 0x030D0000
  PyObject* object = nullptr;
  if (PyWeakref_GetRef(ref, &object) < 0) PyErr_Clear();
  Py_XDECREF(object);  // the caller holds the head: comparing the pointer is all that is needed
  return object;
#else
  return PyWeakref_GetObject(ref);
#endif
}

bool head_matches(const Plan& p, PyObject* head) {
  if (referent(p.head_ref) != head || Py_TYPE(head) != p.head_type) return false;
  for (const auto& [object, type] : p.types) {
    if (Py_TYPE(object) != type) return false;
  }
  for (const auto& [dict, size] : p.sizes) {
    if (PyDict_GET_SIZE(dict) != size) return false;
  }
  for (const Probe& probe : p.probes) {
    PyObject* found = PyDict_GetItemWithError(probe.dict, probe.key);  // borrowed
    if (found == nullptr) {
      PyErr_Clear();  // a key that hashes badly would raise: a mismatch either way
      return false;
    }
    if (probe.value != nullptr && found != probe.value) return false;
  }
  for (size_t i = 0; i < p.watched.size(); ++i) {
    const Tensor& t = p.watched[i];
    const TensorMeta& m = p.metas[i];
    if (t.scalar_type() != m.dtype || t.device() != m.device || t.layout() != at::kStrided ||
        t.sizes() != at::IntArrayRef(m.sizes) || t.strides() != at::IntArrayRef(m.strides) ||
        t.key_set().has_any(kUnusualTensorKeys)) {
      return false;
    }
  }
  return true;
}

bool fits32(const Tensor& t) {
  return (t.size(-1) - 1) * std::abs(t.stride(-1)) < (int64_t{1} << 31);
}

// The features, labels and baselines of a call, checked against the plan; batch 0 when they do not match.
struct Arguments {
  std::vector<Tensor> features, baselines;
  Tensor labels;
  int64_t batch = 0;
};

bool sequence_of(PyObject* o, Py_ssize_t n) {
  return (PyList_Check(o) || PyTuple_Check(o)) && PySequence_Fast_GET_SIZE(o) == n;
}

Arguments arguments(const Plan& p, PyObject* features, PyObject* labels, PyObject* baselines) {
  Arguments a;
  if (!sequence_of(features, p.n)) return a;
  PyObject** items = PySequence_Fast_ITEMS(features);
  int64_t batch = -1;
  a.features.reserve(p.n);
  for (int64_t i = 0; i < p.n; ++i) {
    const Tensor* f = plain(items[i]);
    if (f == nullptr || f->dim() != 2 || f->size(1) != p.dims[i] || f->scalar_type() != p.dtype ||
        f->device() != p.device || (p.offsets32 && !fits32(*f))) {
      return a;
    }
    if (batch < 0) batch = f->size(0);
    if (f->size(0) != batch) return a;
    a.features.push_back(*f);
  }
  if (batch <= 0) return a;
  const Tensor* y = plain(labels);
  if (y == nullptr || y->scalar_type() != at::kLong || y->dim() != 1 || y->size(0) != batch ||
      y->device() != p.device) {
    return a;
  }
  if ((baselines == Py_None) != (p.baselines == 0)) return a;
  if (baselines != Py_None) {
    if (!sequence_of(baselines, p.n)) return a;
    PyObject** base = PySequence_Fast_ITEMS(baselines);
    for (int64_t i = 0; i < p.n; ++i) {
      const Tensor* b = plain(base[i]);
      const bool shape = p.baselines == 1 ? b != nullptr && b->dim() == 1 && b->size(0) == p.dims[i]
                                          : b != nullptr && b->dim() == 2 && b->size(0) == batch &&
                                                b->size(1) == p.dims[i];
      if (!shape || b->scalar_type() != p.dtype || b->device() != p.device || (p.offsets32 && !fits32(*b))) {
        return a;
      }
      a.baselines.push_back(*b);
    }
  }
  a.labels = *y;
  a.batch = batch;
  return a;
}

Plan* plan_of(PyObject* capsule) {
  return static_cast<Plan*>(PyCapsule_GetPointer(capsule, kCapsule));  // raises for anything else
}

void drop_plan(PyObject* capsule) { delete static_cast<Plan*>(PyCapsule_GetPointer(capsule, kCapsule)); }

// Releases the GIL for the op: other Python threads run meanwhile (the op holds no Python object).
struct WithoutGil {
  PyThreadState* state = PyEval_SaveThread();
  ~WithoutGil() { PyEval_RestoreThread(state); }
};

using ShapleyFn = std::tuple<Tensor, Tensor>(at::TensorList, c10::string_view, at::TensorList, at::TensorList,
                                             const Tensor&, c10::string_view);

const c10::TypedOperatorHandle<ShapleyFn>& shapley_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastshap::shapley", "").typed<ShapleyFn>();
  return op;
}

// Whether stats rows 2 and 3 (non-finite partials per modality, NaN phi rows) count anything.
bool counts_bad(const Tensor& stats) {
  const Tensor rows = stats.narrow(0, 2, 2);
  const Tensor host = rows.device().is_cpu() ? rows.contiguous() : rows.to(at::kCPU);  // one read back
  bool bad = false;
  AT_DISPATCH_FLOATING_TYPES(host.scalar_type(), "fastshap_counts_bad", [&] {
    const scalar_t* v = host.data_ptr<scalar_t>();
    for (int64_t i = 0; i < host.numel(); ++i) bad |= v[i] != scalar_t(0);
  });
  return bad;
}

// plan_new(head, head_type, types, sizes, probes, features, labels, baselines, watched, kind, benefit,
//          offsets32) -> capsule. The example call's features, labels and baselines fix the plan's
// modalities, widths, dtype, device and baselines; `watched` are the live parameter tensors.
PyObject* plan_new(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 12, "plan_new takes 12 arguments");
  auto plan = std::make_unique<Plan>();
  Plan& p = *plan;
  p.head_ref = PyWeakref_NewRef(args[0], nullptr);
  if (p.head_ref == nullptr) return nullptr;
  TORCH_CHECK(PyType_Check(args[1]), "plan_new: head_type");
  p.head_type = reinterpret_cast<PyTypeObject*>(keep(p, args[1]));
  for (PyObject* seq : {args[2], args[3], args[4]}) TORCH_CHECK(PyList_Check(seq), "plan_new: lists");
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[2]); ++i) {
    PyObject* pair = PyList_GET_ITEM(args[2], i);
    TORCH_CHECK(PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2, "plan_new: types");
    PyObject* type = PyTuple_GET_ITEM(pair, 1);
    TORCH_CHECK(PyType_Check(type), "plan_new: types");
    p.types.emplace_back(keep(p, PyTuple_GET_ITEM(pair, 0)), reinterpret_cast<PyTypeObject*>(keep(p, type)));
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[3]); ++i) {
    PyObject* pair = PyList_GET_ITEM(args[3], i);
    TORCH_CHECK(PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 && PyDict_Check(PyTuple_GET_ITEM(pair, 0)),
                "plan_new: sizes");
    p.sizes.emplace_back(keep(p, PyTuple_GET_ITEM(pair, 0)), PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1)));
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[4]); ++i) {
    PyObject* triple = PyList_GET_ITEM(args[4], i);
    TORCH_CHECK(PyTuple_Check(triple) && PyTuple_GET_SIZE(triple) == 3 && PyDict_Check(PyTuple_GET_ITEM(triple, 0)),
                "plan_new: probes");
    PyObject* value = PyTuple_GET_ITEM(triple, 2);
    p.probes.push_back({keep(p, PyTuple_GET_ITEM(triple, 0)), keep(p, PyTuple_GET_ITEM(triple, 1)),
                        value == Py_None ? nullptr : keep(p, value)});
  }
  TORCH_CHECK(PyList_Check(args[5]) && PyList_GET_SIZE(args[5]) >= 1, "plan_new: features");
  p.n = PyList_GET_SIZE(args[5]);
  for (int64_t i = 0; i < p.n; ++i) {
    const Tensor* f = plain(PyList_GET_ITEM(args[5], i));
    TORCH_CHECK(f != nullptr && f->dim() == 2, "plan_new: features");
    p.dims.push_back(f->size(1));
    p.dtype = f->scalar_type();
    p.device = f->device();
  }
  if (args[7] != Py_None) {
    TORCH_CHECK(PyList_Check(args[7]) || PyTuple_Check(args[7]), "plan_new: baselines");
    const Tensor* b0 = plain(PySequence_Fast_ITEMS(args[7])[0]);
    TORCH_CHECK(b0 != nullptr, "plan_new: baselines");
    p.baselines = b0->dim() == 1 ? 1 : 2;
  }
  TORCH_CHECK(PyList_Check(args[8]), "plan_new: watched");
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[8]); ++i) {
    PyObject* o = PyList_GET_ITEM(args[8], i);
    TORCH_CHECK(THPVariable_Check(o), "plan_new: watched");
    p.watched.push_back(THPVariable_Unpack(o));
    p.metas.push_back(meta_of(p.watched.back()));
  }
  TORCH_CHECK(PyUnicode_Check(args[9]) && PyUnicode_Check(args[10]), "plan_new: kind, benefit");
  p.kind = PyUnicode_AsUTF8(args[9]);
  p.benefit = PyUnicode_AsUTF8(args[10]);
  p.offsets32 = PyObject_IsTrue(args[11]) == 1;
  PyObject* capsule = PyCapsule_New(plan.get(), kCapsule, drop_plan);
  if (capsule != nullptr) plan.release();
  return capsule;
  END_HANDLE_TH_ERRORS
}

// plan_check(plan, head, features, labels, baselines) -> the batch size, or None when the call does not
// match the plan.
PyObject* plan_check(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 5, "plan_check takes 5 arguments");
  const Plan* p = plan_of(args[0]);
  if (p == nullptr) return nullptr;
  if (!untraced() || !head_matches(*p, args[1])) Py_RETURN_NONE;
  const Arguments a = arguments(*p, args[2], args[3], args[4]);
  if (a.batch == 0) Py_RETURN_NONE;
  return PyLong_FromLongLong(a.batch);
  END_HANDLE_TH_ERRORS
}

// plan_run(plan, head, features, labels, baselines, checked) -> (phi, stats, bad), or None when the call does
// not match the plan. The op runs with the planned parameters, without autograd and autocast (phi must not
// depend on either), the GIL released; bad: stats rows 2 and 3 count something (read only when checked).
PyObject* plan_run(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 6, "plan_run takes 6 arguments");
  const Plan* p = plan_of(args[0]);
  if (p == nullptr) return nullptr;
  if (!untraced() || !head_matches(*p, args[1])) Py_RETURN_NONE;
  const Arguments a = arguments(*p, args[2], args[3], args[4]);
  if (a.batch == 0) Py_RETURN_NONE;
  const bool checked = PyObject_IsTrue(args[5]) == 1;
  Tensor phi, stats;
  bool bad = false;
  {
    WithoutGil released;
    at::AutoDispatchBelowADInplaceOrView no_autograd;
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    std::tie(phi, stats) = shapley_op().call(a.features, p->kind, p->watched, a.baselines, a.labels, p->benefit);
    if (checked) bad = counts_bad(stats);
  }
  PyObject* out = PyTuple_New(3);
  if (out == nullptr) return nullptr;
  PyTuple_SET_ITEM(out, 0, THPVariable_Wrap(std::move(phi)));
  PyTuple_SET_ITEM(out, 1, THPVariable_Wrap(std::move(stats)));
  PyTuple_SET_ITEM(out, 2, PyBool_FromLong(bad));
  return out;
  END_HANDLE_TH_ERRORS
}

// add_counts(counters, stats) -> bool: counters[:, :n] += stats[2:4] (a DeferredChecks' float64 (2, width)
// counters), or False without adding when they are on another device or too narrow.
PyObject* add_counts(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 2 && THPVariable_Check(args[0]) && THPVariable_Check(args[1]), "add_counts(counters, stats)");
  const Tensor& counters = THPVariable_Unpack(args[0]);
  const Tensor& stats = THPVariable_Unpack(args[1]);
  const int64_t n = stats.size(1);
  if (counters.device() != stats.device() || counters.dim() != 2 || counters.size(0) != 2 || counters.size(1) < n ||
      counters.scalar_type() != at::kDouble || stats.dim() != 2 || stats.size(0) != 4) {
    Py_RETURN_FALSE;
  }
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  if (counters.device().is_cpu() && counters.is_contiguous() && stats.is_contiguous()) {
    double* out = counters.data_ptr<double>();
    const int64_t width = counters.size(1);
    AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "fastshap_add_counts", [&] {
      const scalar_t* s = stats.data_ptr<scalar_t>();
      for (int64_t r = 0; r < 2; ++r) {
        for (int64_t i = 0; i < n; ++i) out[r * width + i] += static_cast<double>(s[(r + 2) * n + i]);
      }
    });
  } else {
    counters.narrow(1, 0, n).add_(stats.narrow(0, 2, 2));  // one launch on a GPU
  }
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

// stats_bad(stats) -> bool: whether rows 2 and 3 count anything (a synchronisation on a GPU).
PyObject* stats_bad(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 1 && THPVariable_Check(args[0]), "stats_bad(stats)");
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  return PyBool_FromLong(counts_bad(THPVariable_Unpack(args[0])));
  END_HANDLE_TH_ERRORS
}

PyMethodDef kMethods[] = {
    {"plan_new", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(plan_new)), METH_FASTCALL,
     "A plan of a checked fastshap call (fastshap/_call_plan.py)."},
    {"plan_check", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(plan_check)), METH_FASTCALL,
     "The batch size when a call matches the plan, else None."},
    {"plan_run", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(plan_run)), METH_FASTCALL,
     "(phi, stats, bad) of a call that matches the plan, else None."},
    {"add_counts", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(add_counts)), METH_FASTCALL,
     "Adds stats rows 2 and 3 to DeferredChecks counters."},
    {"stats_bad", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(stats_bad)), METH_FASTCALL,
     "Whether stats rows 2 and 3 count anything."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMethodDef* call_plan_methods() { return kMethods; }

}  // namespace fastshap
