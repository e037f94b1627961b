// The exceptions the ops raise for bad values. In Python they are validated_loss.diagnostics'
// TargetOutOfRangeError (an IndexError) and NonFiniteLogitsError (a ValueError) themselves, not
// torch's IndexError/ValueError: under torch.compile the Python code around the op is not run per
// call, so nothing there could convert them. The classes read their facts (position, value,
// count) from the message, which already names them.
//
// This header is Python-free (the CUDA files include it through op_common); the .cpp holds the
// Python side.
#pragma once

#include <string>

namespace validated_loss {

[[noreturn]] void throw_target_error(std::string message);
[[noreturn]] void throw_nonfinite_error(std::string message);

}  // namespace validated_loss
