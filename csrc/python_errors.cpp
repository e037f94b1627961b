#include "python_errors.h"

#include <torch/csrc/Exceptions.h>

namespace validated_loss {
namespace {

// validated_loss.diagnostics.<name>, looked up once it can be (torch calls python_type() while
// translating the exception, with the GIL held); torch's own `fallback` until then.
PyObject* diagnostics_class(PyObject*& cache, const char* name, PyObject* fallback) {
  if (cache != nullptr) return cache;
  PyObject* module = PyImport_ImportModule("validated_loss.diagnostics");
  PyObject* found = module ? PyObject_GetAttrString(module, name) : nullptr;
  Py_XDECREF(module);
  if (found == nullptr || !PyExceptionClass_Check(found)) {
    PyErr_Clear();
    Py_XDECREF(found);
    return fallback;
  }
  cache = found;  // a reference kept for the life of the process
  return cache;
}

// torch turns a PyTorchError into python_type()(message), the message unchanged.
struct TargetError : torch::PyTorchError {
  using PyTorchError::PyTorchError;
  PyObject* python_type() override {
    static PyObject* cache = nullptr;
    return diagnostics_class(cache, "TargetOutOfRangeError", PyExc_IndexError);
  }
};

struct NonFiniteError : torch::PyTorchError {
  using PyTorchError::PyTorchError;
  PyObject* python_type() override {
    static PyObject* cache = nullptr;
    return diagnostics_class(cache, "NonFiniteLogitsError", PyExc_ValueError);
  }
};

}  // namespace

void throw_target_error(std::string message) {
  throw TargetError(std::move(message));
}

void throw_nonfinite_error(std::string message) {
  throw NonFiniteError(std::move(message));
}

}  // namespace validated_loss
