// The exceptions the ops raise for bad values. In Python they are validated_loss.errors'
// TargetOutOfRangeError (an IndexError) and NonFiniteLogitsError (a ValueError) themselves, built
// with their facts as keyword arguments (position, value, count, ...), not torch's
// IndexError/ValueError: under torch.compile the Python code around the op is not run per call, so
// nothing there could convert them, and nothing reads the facts back from the message.
//
// This header is Python-free (the CUDA files include it through op_common); the .cpp holds the
// Python side.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace c10 {
class Error;
}

namespace validated_loss {

// An out-of-range class index: the first one (its full index into the target, and value), how many.
struct TargetErrorFacts {
  std::vector<int64_t> position;
  int64_t value;
  int64_t count;
  int64_t num_classes;
  int64_t ignore_index;
};

// A non-finite logit: the first row holding one (flat), its class, how many rows hold one.
struct NonFiniteFacts {
  int64_t row;
  int64_t column;
  int64_t count;
};

[[noreturn]] void throw_target_error(std::string message, const TargetErrorFacts& facts);
[[noreturn]] void throw_nonfinite_error(std::string message, const NonFiniteFacts& facts);

// The C++ autograd of cross_entropy_fwd (autograd.cpp), which has no Python of its own:
// autograd's "modified by an inplace operation" error (edited_in_place) raised as
// checks.logits_modified_error words it (a LogitsModifiedError, `from None`), and deferred
// validation's check at backward, _deferred.check_pending, called as it is.
bool edited_in_place(const c10::Error& error);
[[noreturn]] void throw_logits_modified(const c10::Error& error);
void check_pending_in_python();

}  // namespace validated_loss
