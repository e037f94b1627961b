// The name of the call a check comes from: the Python layer sets it just before an eager call
// that may queue one (the user's file:line); the op takes it (clearing it) first thing. Never set
// inside a compiled graph, so an unset origin says the call came from one. Per thread.
#pragma once

#include <string>

namespace validated_loss {

void set_call_origin(std::string origin);
std::string take_call_origin();

}  // namespace validated_loss
