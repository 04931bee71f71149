// Host-side API of the extension: CPU kernels, CUDA launchers (or stubs in a CPU-only build) and errors.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "step_math.h"

namespace flexidit {

// A CUDA runtime call failed; the message carries the CUDA error name and string.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Arena::block did not fit.
struct ArenaFullError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- CPU (cpu_kernels.cpp) ----
void cpu_step(const StepParams& p, int dtype);
void cpu_philox_normal(uint64_t seed, uint32_t step, int64_t n, float* out, uint64_t group_offset);

// ---- CUDA (cuda_kernels.cu, or cuda_unavailable.cpp in a CPU-only build, where all of these but
// built_with_cuda/cuda_device_count throw std::runtime_error) ----
bool built_with_cuda();
int cuda_device_count();
std::pair<size_t, size_t> cuda_mem_get_info(int device);  // (free, total) bytes
void* cuda_malloc(size_t nbytes, int device);
void cuda_free(void* ptr, int device) noexcept;  // errors ignored (used from destructors)
// Device ordinal of the memory at ptr (device, managed or registered host memory); -1 for null or
// ordinary (unregistered) host memory.
int cuda_pointer_device(uintptr_t ptr);
// The launchers make `device` current for the launch (restoring the previous one after it); `stream`
// must belong to that device (0: its legacy default stream).
void cuda_step(const StepParams& p, int dtype, int device, uintptr_t stream);
void cuda_philox_normal(uint64_t seed, uint32_t step, int64_t n, float* out, uint64_t group_offset, int device,
                        uintptr_t stream);
void cuda_stream_synchronize(uintptr_t stream);
void cuda_memcpy(uintptr_t dst, uintptr_t src, size_t nbytes, uintptr_t stream);  // cudaMemcpyDefault

}  // namespace flexidit
