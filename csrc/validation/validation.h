// Validation as the loss ops see it: all the CUDA ops' host code calls (the CPU ops call none of
// it: they raise at once through op_common's raise_for_status). What is behind it (the status
// queue, the graph slots and their publish kernel, the state the Python layer reaches through
// validated_loss._C) lives in this folder and nowhere else; deferred_cuda.cu implements this.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include "call_origin.h"  // take_call_origin(): first thing in an op that reports a status

namespace validated_loss::cuda {

// First thing in every CUDA op: raises an earlier call's error whose record has reached the host
// (never waits). Nothing while `stream` is being captured: an error raised there would abort the
// user's capture, and CUDA forbids the event queries.
void check_earlier_calls(cudaStream_t stream);

// After a forward on `stream` wrote `status`:
//   0 (off)       nothing;
//   1 (sync)      copy it to the host, wait, raise what it describes (the CPU op's error);
//   2 (deferred)  copy it to pinned memory behind an event and queue it: checked, without
//                 waiting, at the next call or backward;
//   1 or 2 while `stream` is being captured: the graph publishes bad records into a slot at
//                 each replay (nothing is copied or waited for outside the graph).
// `origin` names the call (take_call_origin(), taken at the op's start).
void report_status(int64_t validate, const at::Tensor& status, cudaStream_t stream, at::IntArrayRef target_sizes,
                   int64_t num_classes, int64_t ignore_index, at::IntArrayRef logits_sizes, std::string origin);

}  // namespace validated_loss::cuda
