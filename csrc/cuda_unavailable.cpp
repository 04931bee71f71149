// CPU-only build: the CUDA entry points exist and say why they cannot run.
#include "kernels.h"

namespace flexidit {

[[noreturn]] static void no_cuda() {
  throw std::runtime_error(
      "flexidit_trt._C was built without CUDA (no nvcc at build time, or FLEXIDIT_WITH_CUDA=OFF); "
      "rebuild with nvcc on PATH to use device='cuda'");
}

bool built_with_cuda() { return false; }
int cuda_device_count() { return 0; }
std::pair<size_t, size_t> cuda_mem_get_info(int) { no_cuda(); }
void* cuda_malloc(size_t, int) { no_cuda(); }
void cuda_free(void*, int) noexcept {}
int cuda_pointer_device(uintptr_t) { no_cuda(); }
void cuda_step(const StepParams&, int, int, uintptr_t) { no_cuda(); }
void cuda_philox_normal(uint64_t, uint32_t, int64_t, float*, uint64_t, int, uintptr_t) { no_cuda(); }
void cuda_stream_synchronize(uintptr_t) { no_cuda(); }
void cuda_memcpy(uintptr_t, uintptr_t, size_t, uintptr_t) { no_cuda(); }

}  // namespace flexidit
