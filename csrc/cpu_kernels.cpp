// CPU versions of the kernels: plain loops over the same per-group functions the CUDA kernels use.
#include "kernels.h"

namespace flexidit {

template <int DT>
static void cpu_step_typed(const StepParams& p) {
  const int64_t groups = p.groups();
  for (int64_t g = 0; g < groups; ++g) step_group<DT>(p, g);
}

void cpu_step(const StepParams& p, int dtype) {
  switch (dtype) {
    case kFloat32:
      cpu_step_typed<kFloat32>(p);
      break;
    case kFloat16:
      cpu_step_typed<kFloat16>(p);
      break;
    case kBFloat16:
      cpu_step_typed<kBFloat16>(p);
      break;
    default:
      throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
  }
}

void cpu_philox_normal(uint64_t seed, uint32_t step, int64_t n, float* out, uint64_t group_offset) {
  const int64_t groups = (n + 3) / 4;
  for (int64_t g = 0; g < groups; ++g) philox_normal_group(seed, step, n, out, g, group_offset);
}

}  // namespace flexidit
