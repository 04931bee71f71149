// One aligned allocation (cudaMalloc on a device, aligned host memory on the CPU) from which the run's
// buffers are carved: engine activations, latents, model outputs, noise. Blocks are handed out in
// order and released all at once (reset) or with the allocation (close / destruction).
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace flexidit {

constexpr size_t kArenaAlign = 256;  // TensorRT device memory and CUDA graphs expect 256-byte alignment

// Capacity summed over the arenas currently open in this process (host and device): 0 once every arena
// of a run has been closed or destroyed.
size_t open_arena_bytes();

class Arena {
 public:
  // device < 0: host memory; otherwise that CUDA device.
  Arena(size_t nbytes, int device);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  uintptr_t block(size_t nbytes, size_t align);  // throws ArenaFullError when it does not fit
  void reset();
  void close() noexcept;  // idempotent

  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(base_); }
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }
  bool closed() const { return base_ == nullptr; }
  int device() const { return device_; }

 private:
  void* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  int device_ = -1;
};

}  // namespace flexidit
