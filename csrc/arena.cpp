#include "arena.h"

#include <stdlib.h>

#include <atomic>
#include <new>
#include <string>

#include "kernels.h"

namespace flexidit {

static std::atomic<size_t> g_open_bytes{0};

size_t open_arena_bytes() { return g_open_bytes.load(); }

Allocation::Allocation(size_t nbytes, int device) : capacity_(nbytes), device_(device) {
  if (nbytes == 0) throw std::invalid_argument("Arena size must be positive");
  if (nbytes > SIZE_MAX - kArenaAlign) throw std::invalid_argument("Arena size too large");
  const size_t rounded = (nbytes + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
  base_ = device < 0 ? aligned_alloc(kArenaAlign, rounded) : cuda_malloc(rounded, device);
  if (base_ == nullptr) throw std::bad_alloc();
  if (ptr() % kArenaAlign != 0) {  // cudaMalloc guarantees 256; keep the promise checked
    if (device < 0) {
      free(base_);
    } else {
      cuda_free(base_, device);
    }
    throw std::runtime_error("allocation is not 256-byte aligned");
  }
  g_open_bytes += capacity_;
}

Allocation::~Allocation() {
  if (device_ < 0) {
    free(base_);
  } else {
    cuda_free(base_, device_);
  }
  g_open_bytes -= capacity_;
}

Arena::Arena(size_t nbytes, int device)
    : allocation_(std::make_shared<Allocation>(nbytes, device)), capacity_(nbytes), device_(device) {}

uintptr_t Arena::block(size_t nbytes, size_t align) {
  if (closed()) throw std::runtime_error("Arena is closed");
  if (align == 0 || (align & (align - 1)) != 0) {
    throw std::invalid_argument("block alignment must be a power of two, got " + std::to_string(align));
  }
  const uintptr_t start = (ptr() + used_ + align - 1) & ~static_cast<uintptr_t>(align - 1);
  const size_t offset = start - ptr();
  if (offset > capacity_ || nbytes > capacity_ - offset) {
    throw ArenaFullError("Arena full: requested " + std::to_string(nbytes) + " bytes (align " +
                         std::to_string(align) + ") but " + std::to_string(used_) + " of " +
                         std::to_string(capacity_) + " bytes are used (" + std::to_string(capacity_ - used_) +
                         " free)");
  }
  used_ = offset + nbytes;
  return start;
}

HostBlock Arena::host_block(size_t nbytes, size_t align) {
  if (device_ >= 0) throw std::invalid_argument("host_block needs a host arena");
  const uintptr_t start = block(nbytes, align);
  return HostBlock{allocation_, live_, start, nbytes};
}

void Arena::reset() {
  const size_t live = live_host_blocks();
  if (live > 0 && !closed()) {  // after close() nothing is handed out again: the views stay valid
    throw std::runtime_error("reset(): " + std::to_string(live) +
                             (live == 1 ? " host array of this arena is" : " host arrays of this arena are") +
                             " still alive and would see their memory handed out again; drop them first "
                             "(del), or close() the arena, which keeps their memory until they go");
  }
  used_ = 0;
}

void Arena::close() noexcept {
  allocation_.reset();
  used_ = 0;
}

}  // namespace flexidit
