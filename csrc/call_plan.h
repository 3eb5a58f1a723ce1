// The Python functions of fastshap._C that fastshap/_call_plan.py calls (call_plan.cpp): the module's method
// table, installed by PyInit__C (fastshap.cpp).
#pragma once

#include <Python.h>

namespace fastshap {

PyMethodDef* call_plan_methods();

}  // namespace fastshap
