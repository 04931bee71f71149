#include "arena.h"

#include <stdlib.h>

#include <atomic>
#include <new>
#include <string>

#include "kernels.h"

namespace flexidit {

static std::atomic<size_t> g_open_bytes{0};

size_t open_arena_bytes() { return g_open_bytes.load(); }

Arena::Arena(size_t nbytes, int device) : capacity_(nbytes), device_(device) {
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
    base_ = nullptr;
    throw std::runtime_error("allocation is not 256-byte aligned");
  }
  g_open_bytes += capacity_;
}

Arena::~Arena() { close(); }

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

void Arena::reset() { used_ = 0; }

void Arena::close() noexcept {
  if (base_ == nullptr) return;
  if (device_ < 0) {
    free(base_);
  } else {
    cuda_free(base_, device_);
  }
  base_ = nullptr;
  used_ = 0;
  g_open_bytes -= capacity_;
}

}  // namespace flexidit
