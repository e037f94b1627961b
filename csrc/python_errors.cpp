#include "python_errors.h"

#include <c10/util/Exception.h>
#include <torch/csrc/Exceptions.h>

namespace validated_loss {
namespace {

// validated_loss.errors.<name>, looked up once it can be (with the GIL held); nullptr until then
// (the builtin type is raised instead).
PyObject* errors_class(PyObject*& cache, const char* name) {
  if (cache != nullptr) return cache;
  PyObject* module = PyImport_ImportModule("validated_loss.errors");
  PyObject* found = module ? PyObject_GetAttrString(module, name) : nullptr;
  Py_XDECREF(module);
  if (found == nullptr || !PyExceptionClass_Check(found)) {
    PyErr_Clear();
    Py_XDECREF(found);
    return nullptr;
  }
  cache = found;  // a reference kept for the life of the process
  return cache;
}

// Raises cls(message, **kwargs) as the Python exception itself: a torch::python_error carries the
// built instance through the dispatcher, and torch's binding restores it as it is (the attributes
// set). make_kwargs runs with the GIL held and returns a new reference (a dict).
template <class MakeKwargs>
[[noreturn]] void throw_python(PyObject*& cache, const char* name, PyObject* builtin, const std::string& message,
                               MakeKwargs make_kwargs) {
  {
    pybind11::gil_scoped_acquire gil;
    PyObject* cls = errors_class(cache, name);
    PyObject* text = PyUnicode_FromStringAndSize(message.data(), static_cast<Py_ssize_t>(message.size()));
    PyObject* args = text != nullptr ? PyTuple_Pack(1, text) : nullptr;
    PyObject* kwargs = cls != nullptr && args != nullptr ? make_kwargs() : nullptr;
    PyObject* error = kwargs != nullptr ? PyObject_Call(cls, args, kwargs) : nullptr;
    Py_XDECREF(text);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    if (error != nullptr) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error)), error);
      Py_DECREF(error);
    } else {  // the class could not be found or built: the builtin type, with the message
      PyErr_Clear();
      PyErr_SetString(builtin, message.c_str());
    }
    python_error raised;
    raised.persist();
    throw raised;
  }
}

PyObject* int_tuple(const std::vector<int64_t>& values) {
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(values.size()));
  for (size_t i = 0; tuple != nullptr && i < values.size(); ++i) {
    PyTuple_SET_ITEM(tuple, static_cast<Py_ssize_t>(i), PyLong_FromLongLong(values[i]));
  }
  return tuple;
}

}  // namespace

void throw_target_error(std::string message, const TargetErrorFacts& facts) {
  if (!Py_IsInitialized()) C10_THROW_ERROR(IndexError, message);  // no interpreter: torch's own type
  static PyObject* cache = nullptr;
  throw_python(cache, "TargetOutOfRangeError", PyExc_IndexError, message, [&] {
    return Py_BuildValue("{s:N,s:L,s:L,s:L,s:L}", "position", int_tuple(facts.position), "value",
                         static_cast<long long>(facts.value), "count", static_cast<long long>(facts.count),
                         "num_classes", static_cast<long long>(facts.num_classes), "ignore_index",
                         static_cast<long long>(facts.ignore_index));
  });
}

void throw_nonfinite_error(std::string message, const NonFiniteFacts& facts) {
  if (!Py_IsInitialized()) C10_THROW_ERROR(ValueError, message);
  static PyObject* cache = nullptr;
  throw_python(cache, "NonFiniteLogitsError", PyExc_ValueError, message, [&] {
    return Py_BuildValue("{s:L,s:L,s:L}", "row", static_cast<long long>(facts.row), "column",
                         static_cast<long long>(facts.column), "count", static_cast<long long>(facts.count));
  });
}

namespace {

// The Python exception now set (or, if none is, a RuntimeError saying what failed), thrown as a
// torch::python_error that torch's binding restores as it is.
[[noreturn]] void throw_current_python_error(const char* what) {
  if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, what);
  python_error raised;
  raised.persist();
  throw raised;
}

// validated_loss.<module>.<name>(*args), a new reference, or nullptr with a Python error set.
PyObject* call_package_function(const char* module_name, const char* name, PyObject* arg) {
  PyObject* module = PyImport_ImportModule(module_name);
  PyObject* function = module != nullptr ? PyObject_GetAttrString(module, name) : nullptr;
  Py_XDECREF(module);
  PyObject* result = function != nullptr
                         ? (arg != nullptr ? PyObject_CallOneArg(function, arg) : PyObject_CallNoArgs(function))
                         : nullptr;
  Py_XDECREF(function);
  return result;
}

// What torch's binding makes of a c10::Error's text (HANDLE_TH_ERRORS).
std::string python_text(const c10::Error& error) {
  return torch::processErrorMsg(torch::get_cpp_stacktraces_enabled() ? error.what() : error.what_without_backtrace());
}

}  // namespace

bool edited_in_place(const c10::Error& error) {
  return std::string(error.what_without_backtrace()).find("modified by an inplace operation") != std::string::npos;
}

void throw_logits_modified(const c10::Error& error) {
  const std::string text = python_text(error);
  pybind11::gil_scoped_acquire gil;
  PyObject* message = PyUnicode_FromStringAndSize(text.data(), static_cast<Py_ssize_t>(text.size()));
  PyObject* cause = message != nullptr ? PyObject_CallOneArg(PyExc_RuntimeError, message) : nullptr;
  Py_XDECREF(message);
  PyObject* explained =
      cause != nullptr ? call_package_function("validated_loss.checks", "logits_modified_error", cause) : nullptr;
  Py_XDECREF(cause);
  if (explained != nullptr) {
    PyException_SetCause(explained, nullptr);  // `raise ... from None`: sets __suppress_context__ too
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(explained)), explained);
    Py_DECREF(explained);
  }
  throw_current_python_error("validated_loss: checks.logits_modified_error failed");
}

void check_pending_in_python() {
  pybind11::gil_scoped_acquire gil;
  PyObject* result = call_package_function("validated_loss._deferred", "check_pending", nullptr);
  if (result == nullptr) throw_current_python_error("validated_loss: _deferred.check_pending failed");
  Py_DECREF(result);
}

}  // namespace validated_loss
