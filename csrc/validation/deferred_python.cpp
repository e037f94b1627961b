// validated_loss._C's functions: deferred validation's host state as the Python layer reaches it
// on every eager call, for a fraction of an op call's cost (a torch.ops call costs microseconds;
// these touch no tensor and never raise a torch error). Checks themselves are the op
// check_deferred, so their errors take torch's usual way to Python.
#include <Python.h>

#include "deferred.h"

namespace validated_loss {

void register_cpp_autograd();  // autograd.cpp

namespace {

PyObject* py_register_autograd(PyObject*, PyObject*) {
  try {
    register_cpp_autograd();
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* py_set_call_origin(PyObject*, PyObject* origin) {
  const char* text = PyUnicode_AsUTF8(origin);
  if (text == nullptr) return nullptr;
  set_call_origin(text);
  Py_RETURN_NONE;
}

PyObject* py_pending_checks(PyObject*, PyObject*) {
  return PyLong_FromSize_t(pending_checks());
}

PyObject* py_clear_checks(PyObject*, PyObject*) {
  clear_checks();
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"set_call_origin", py_set_call_origin, METH_O,
     "Names the check the next op call on this thread queues (the caller's file:line)."},
    {"pending_checks", py_pending_checks, METH_NOARGS,
     "Checks queued, and CUDA-graph slots holding a record or whose graph is gone."},
    {"clear_checks", py_clear_checks, METH_NOARGS, "Drops every queued check and unread graph record."},
    // Not deferred validation's: the one other function _C has (autograd.cpp says why it is on demand).
    {"register_autograd", py_register_autograd, METH_NOARGS,
     "Registers cross_entropy_fwd's C++ autograd (csrc/autograd.cpp) for the Autograd key."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMethodDef* deferred_python_methods() {
  return methods;
}

}  // namespace validated_loss
