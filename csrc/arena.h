// One aligned allocation (cudaMalloc on a device, aligned host memory on the CPU) from which the run's
// buffers are carved: engine activations, latents, model outputs, noise. Blocks are handed out in
// order and released all at once (reset) or with the allocation (close / destruction).
//
// Ownership: the memory belongs to an Allocation shared by the Arena and by every HostBlock carved from
// it, so a host view that outlives close() keeps the memory until it is dropped (close() gives the
// arena's share up; the last owner frees). Raw blocks (block()) are plain addresses and own nothing.
// Not synchronised: callers serialise (the Python binding holds the GIL for every Arena call).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <memory>

namespace flexidit {

constexpr size_t kArenaAlign = 256;  // TensorRT device memory and CUDA graphs expect 256-byte alignment

// Capacity summed over the allocations currently alive in this process (host and device): 0 once every
// arena of a run has been closed or destroyed and its host views dropped.
size_t open_arena_bytes();

// The memory itself; freed by the destructor.
class Allocation {
 public:
  Allocation(size_t nbytes, int device);  // device < 0: host memory; otherwise that CUDA device
  ~Allocation();
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;

  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(base_); }

 private:
  void* base_ = nullptr;
  size_t capacity_ = 0;
  int device_ = -1;
};

// A block of a host arena that keeps the arena's memory alive while it exists (Python: the buffer a
// host_array view is made from) and makes reset() refuse while it exists.
struct HostBlock {
  std::shared_ptr<Allocation> allocation;
  std::shared_ptr<const int> live;  // one owner per live HostBlock: counted by Arena::reset
  uintptr_t ptr = 0;
  size_t nbytes = 0;
};

class Arena {
 public:
  // device < 0: host memory; otherwise that CUDA device.
  Arena(size_t nbytes, int device);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  uintptr_t block(size_t nbytes, size_t align);  // throws ArenaFullError when it does not fit
  HostBlock host_block(size_t nbytes, size_t align);  // host arenas only
  void reset();           // throws std::runtime_error while HostBlocks of this arena are alive
  void close() noexcept;  // idempotent; the memory is freed once no HostBlock holds it either

  uintptr_t ptr() const { return allocation_ ? allocation_->ptr() : 0; }
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }
  bool closed() const { return allocation_ == nullptr; }
  int device() const { return device_; }
  size_t live_host_blocks() const { return static_cast<size_t>(live_.use_count() - 1); }

 private:
  std::shared_ptr<Allocation> allocation_;
  std::shared_ptr<const int> live_ = std::make_shared<const int>(0);
  size_t capacity_ = 0;
  size_t used_ = 0;
  int device_ = -1;
};

}  // namespace flexidit
