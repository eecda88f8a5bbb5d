// What both native tools share: ncnn options from a precision name (as deploy/runners/ncnn_runner.py sets them,
// so the C++ and Python paths run the same kernels), and ncnn's own report of the CPU features it detected.
#pragma once

#include <string>

#include "net.h"

namespace face_native {

// Sets every precision option explicitly: ncnn's defaults turn fp16 on wherever the CPU has it, so an unset
// "fp32" run would be fp16 on ARMv8.2. Returns false for an unknown precision.
bool set_precision(ncnn::Option& opt, const std::string& precision, int fp16_arithmetic /* -1: as precision */);

// {"isa": "...", "neon": 1, "asimdhp": 0, ...}: what ncnn's cpu_support_* queries answer on this CPU.
std::string cpu_features_json();

}  // namespace face_native
