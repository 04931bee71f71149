// CUDA versions of the kernels and the few runtime calls the extension needs. Every call is checked and a
// failure becomes flexidit::CudaError (a Python exception) carrying the CUDA error name and string.
// Kernels are launched on the caller's stream on the caller's device (made current for the launch and
// restored after it) and never synchronise the host.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "kernels.h"

namespace flexidit {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // 1M threads fill any current GPU; grid-stride loops cover the rest

void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls do not report it again
  throw CudaError(std::string(what) + " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

int blocks_for(int64_t groups) {
  return static_cast<int>(std::min<int64_t>((groups + kThreads - 1) / kThreads, kMaxBlocks));
}

// Makes `device` current for the scope and restores the previous device after it. A device that does
// not exist is a CudaError naming it and the number of visible devices.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device == previous_) return;
    const cudaError_t err = cudaSetDevice(device);
    if (err == cudaErrorInvalidDevice) {
      cudaGetLastError();
      int count = 0;
      if (cudaGetDeviceCount(&count) != cudaSuccess) cudaGetLastError();
      throw CudaError("cudaSetDevice(" + std::to_string(device) + ") failed: " + cudaGetErrorName(err) + ": " +
                      cudaGetErrorString(err) + " (CUDA device " + std::to_string(device) +
                      " requested, " + std::to_string(count) + " visible)");
    }
    check(err, "cudaSetDevice");
    changed_ = true;
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

template <int DT>
__global__ void step_kernel(StepParams p) {
  const int64_t groups = p.groups();
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    step_group<DT>(p, g);
  }
}

__global__ void philox_normal_kernel(uint64_t seed, uint32_t step, int64_t n, float* out, uint64_t group_offset) {
  const int64_t groups = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    philox_normal_group(seed, step, n, out, g, group_offset);
  }
}

}  // namespace

bool built_with_cuda() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: report 0, the module stays usable on CPU
    return 0;
  }
  return n;
}

std::pair<size_t, size_t> cuda_mem_get_info(int device) {
  DeviceGuard guard(device);
  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  return {free_bytes, total_bytes};
}

void* cuda_malloc(size_t nbytes, int device) {
  DeviceGuard guard(device);
  void* ptr = nullptr;
  check(cudaMalloc(&ptr, nbytes), "cudaMalloc");
  return ptr;
}

void cuda_free(void* ptr, int device) noexcept {
  if (ptr == nullptr) return;
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  cudaSetDevice(device);
  cudaFree(ptr);  // fails harmlessly at interpreter exit once the runtime is unloading
  cudaSetDevice(previous);
  cudaGetLastError();
}

int cuda_pointer_device(uintptr_t ptr) {
  if (ptr == 0) return -1;
  cudaPointerAttributes attr{};
  check(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)), "cudaPointerGetAttributes");
  return attr.type == cudaMemoryTypeUnregistered ? -1 : attr.device;
}

void cuda_step(const StepParams& p, int dtype, int device, uintptr_t stream) {
  DeviceGuard guard(device);  // first, so that a bad device fails even for an empty step
  const int64_t groups = p.groups();
  if (groups == 0) return;
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      step_kernel<kFloat32><<<blocks_for(groups), kThreads, 0, s>>>(p);
      break;
    case kFloat16:
      step_kernel<kFloat16><<<blocks_for(groups), kThreads, 0, s>>>(p);
      break;
    case kBFloat16:
      step_kernel<kBFloat16><<<blocks_for(groups), kThreads, 0, s>>>(p);
      break;
    default:
      throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
  }
  check(cudaGetLastError(), "step kernel launch");
}

void cuda_philox_normal(uint64_t seed, uint32_t step, int64_t n, float* out, uint64_t group_offset, int device,
                        uintptr_t stream) {
  DeviceGuard guard(device);
  const int64_t groups = (n + 3) / 4;
  if (groups == 0) return;
  philox_normal_kernel<<<blocks_for(groups), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      seed, step, n, out, group_offset);
  check(cudaGetLastError(), "philox_normal kernel launch");
}

void cuda_stream_synchronize(uintptr_t stream) {
  check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

void cuda_memcpy(uintptr_t dst, uintptr_t src, size_t nbytes, uintptr_t stream) {
  if (nbytes == 0) return;
  check(cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), nbytes,
                        cudaMemcpyDefault, reinterpret_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync");
}

}  // namespace flexidit
