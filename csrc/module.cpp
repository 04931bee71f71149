// flexidit_trt._C: the arena, the fused sampler step and Philox noise (CPU and CUDA).
//
// Every function takes raw addresses (Python ints) and, for CUDA, a device ordinal and a stream handle
// (int, 0 = the device's legacy default stream), so the runtime can drive it without torch;
// flexidit_trt/kernels.py adds the checked conveniences over arrays and tensors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include "arena.h"
#include "kernels.h"

namespace py = pybind11;
using namespace flexidit;

namespace {

int dtype_code(const std::string& dtype) {
  if (dtype == "float32") return kFloat32;
  if (dtype == "float16") return kFloat16;
  if (dtype == "bfloat16") return kBFloat16;
  throw std::invalid_argument("model output dtype must be float32, float16 or bfloat16, got '" + dtype + "'");
}

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

StepParams make_params(uintptr_t x, uintptr_t cond, uintptr_t out, int64_t batch, int64_t channels, int64_t hw,
                       int64_t out_channels, double c_x, double c_pred, uintptr_t baseline, double guidance_scale,
                       int64_t guided_channels, bool learned_variance, double log_var_max, double log_var_min,
                       double sigma, bool add_noise, uintptr_t noise, uint64_t seed, uint32_t step,
                       uint64_t offset) {
  if (offset % 4) {
    throw std::invalid_argument("the noise offset must be a multiple of 4, got " + std::to_string(offset));
  }
  if (batch < 0 || channels < 0 || hw < 0) throw std::invalid_argument("batch, channels and hw must be >= 0");
  if (out_channels < channels) {
    throw std::invalid_argument("out_channels (" + std::to_string(out_channels) + ") < channels (" +
                                std::to_string(channels) + ")");
  }
  if (learned_variance && out_channels < 2 * channels) {
    throw std::invalid_argument("learned variance needs out_channels >= 2 * channels, got " +
                                std::to_string(out_channels) + " for " + std::to_string(channels) + " channels");
  }
  if (guided_channels < 0) guided_channels = channels;
  if (guided_channels > channels) {
    throw std::invalid_argument("guided_channels (" + std::to_string(guided_channels) + ") > channels (" +
                                std::to_string(channels) + ")");
  }
  if (batch * channels * hw > 0 && (x == 0 || cond == 0 || out == 0)) {
    throw std::invalid_argument("x, cond and out must be non-null");
  }
  StepParams p{};
  p.x = as_ptr<const float>(x);
  p.cond = as_ptr<const void>(cond);
  p.baseline = as_ptr<const void>(baseline);
  p.out = as_ptr<float>(out);
  p.noise = as_ptr<const float>(noise);
  p.batch = batch;
  p.channels = channels;
  p.hw = hw;
  p.out_channels = out_channels;
  p.guided_channels = guided_channels;
  p.guidance_scale = static_cast<float>(guidance_scale);
  p.c_x = static_cast<float>(c_x);
  p.c_pred = static_cast<float>(c_pred);
  p.log_var_max = static_cast<float>(log_var_max);
  p.log_var_min = static_cast<float>(log_var_min);
  p.sigma = static_cast<float>(sigma);
  p.learned_variance = learned_variance;
  p.add_noise = add_noise;
  p.seed = seed;
  p.step = step;
  p.group_offset = offset / 4;
  return p;
}

#define FX_STEP_ARGS                                                                                         \
  py::arg("x"), py::arg("cond"), py::arg("out"), py::arg("batch"), py::arg("channels"), py::arg("hw"),     \
      py::arg("out_channels"), py::arg("dtype"), py::arg("c_x"), py::arg("c_pred"), py::arg("baseline") = 0, \
      py::arg("guidance_scale") = 1.0, py::arg("guided_channels") = -1, py::arg("learned_variance") = false, \
      py::arg("log_var_max") = 0.0, py::arg("log_var_min") = 0.0, py::arg("sigma") = 0.0,                   \
      py::arg("add_noise") = false, py::arg("noise") = 0, py::arg("seed") = 0, py::arg("step") = 0,        \
      py::arg("offset") = 0

const char* kStepDoc =
    "Fused sampler step x_prev = c_x*x + c_pred*pred + std*noise with guidance in front (see "
    "csrc/step_math.h). Addresses are ints; baseline=0: no guidance; guided_channels=-1: all C; "
    "add_noise with noise=0: Philox noise from (seed, step), element e taking normal offset + e (offset a "
    "multiple of 4). out may equal x.";

const char* kStepCudaDoc =
    "step_cpu on buffers of CUDA device `device`, launched there on stream (a stream of that device; 0: "
    "its legacy default stream). The device is made current for the launch and restored after it.";

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "flexidit-trt native extension: arena, fused sampler step, Philox noise (CPU and CUDA)";
  py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  py::register_exception<ArenaFullError>(m, "ArenaFullError", PyExc_MemoryError);

  m.def("has_cuda", &built_with_cuda, "True when the module was built with the CUDA kernels.");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible (0 without a driver).");
  m.def("cuda_mem_get_info", &cuda_mem_get_info, py::arg("device") = 0,
        "(free, total) bytes of a CUDA device (cudaMemGetInfo).");
  m.def("cuda_stream_synchronize", &cuda_stream_synchronize, py::arg("stream") = 0,
        py::call_guard<py::gil_scoped_release>(), "cudaStreamSynchronize on a stream handle.");

  m.def("cuda_memcpy", &cuda_memcpy, py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::arg("stream") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream): any direction, ordered on stream. "
        "Host memory must stay valid until the stream reaches the copy.");
  m.def("cuda_pointer_device", &cuda_pointer_device, py::arg("ptr"),
        "CUDA device ordinal of the memory at address ptr (cudaPointerGetAttributes); -1 for null or "
        "unregistered host memory.");
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
        const U32x4 r = philox4x32_10(U32x4{counter[0], counter[1], counter[2], counter[3]}, key[0], key[1]);
        return std::array<uint32_t, 4>{r.v0, r.v1, r.v2, r.v3};
      },
      py::arg("counter"), py::arg("key"), "Raw Philox4x32-10 block: 4 counter words, 2 key words -> 4 words.");
  m.def(
      "philox_normal_cpu",
      [](uint64_t seed, uint32_t step, int64_t n, uintptr_t out, uint64_t offset) {
        if (n < 0) throw std::invalid_argument("n must be >= 0");
        if (n > 0 && out == 0) throw std::invalid_argument("out must be non-null");
        if (offset % 4) throw std::invalid_argument("offset must be a multiple of 4");
        cpu_philox_normal(seed, step, n, as_ptr<float>(out), offset / 4);
      },
      py::arg("seed"), py::arg("step"), py::arg("n"), py::arg("out"), py::arg("offset") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "Fill n fp32 at host address out with the standard normals offset .. offset+n-1 of (seed, step).");
  m.def(
      "philox_normal_cuda",
      [](uint64_t seed, uint32_t step, int64_t n, uintptr_t out, uintptr_t stream, int device, uint64_t offset) {
        if (n < 0) throw std::invalid_argument("n must be >= 0");
        if (n > 0 && out == 0) throw std::invalid_argument("out must be non-null");
        if (offset % 4) throw std::invalid_argument("offset must be a multiple of 4");
        cuda_philox_normal(seed, step, n, as_ptr<float>(out), offset / 4, device, stream);
      },
      py::arg("seed"), py::arg("step"), py::arg("n"), py::arg("out"), py::arg("stream") = 0,
      py::arg("device") = 0, py::arg("offset") = 0, py::call_guard<py::gil_scoped_release>(),
      "philox_normal_cpu on a buffer of CUDA device `device`, launched there on stream (a stream of that "
      "device; 0: its legacy default stream).");

  m.def(
      "step_cpu",
      [](uintptr_t x, uintptr_t cond, uintptr_t out, int64_t batch, int64_t channels, int64_t hw,
         int64_t out_channels, const std::string& dtype, double c_x, double c_pred, uintptr_t baseline,
         double guidance_scale, int64_t guided_channels, bool learned_variance, double log_var_max,
         double log_var_min, double sigma, bool add_noise, uintptr_t noise, uint64_t seed, uint32_t step,
         uint64_t offset) {
        const int code = dtype_code(dtype);
        const StepParams p =
            make_params(x, cond, out, batch, channels, hw, out_channels, c_x, c_pred, baseline, guidance_scale,
                        guided_channels, learned_variance, log_var_max, log_var_min, sigma, add_noise, noise, seed,
                        step, offset);
        py::gil_scoped_release release;
        cpu_step(p, code);
      },
      FX_STEP_ARGS, kStepDoc);
  m.def(
      "step_cuda",
      [](uintptr_t x, uintptr_t cond, uintptr_t out, int64_t batch, int64_t channels, int64_t hw,
         int64_t out_channels, const std::string& dtype, double c_x, double c_pred, uintptr_t baseline,
         double guidance_scale, int64_t guided_channels, bool learned_variance, double log_var_max,
         double log_var_min, double sigma, bool add_noise, uintptr_t noise, uint64_t seed, uint32_t step,
         uint64_t offset, uintptr_t stream, int device) {
        const int code = dtype_code(dtype);
        const StepParams p =
            make_params(x, cond, out, batch, channels, hw, out_channels, c_x, c_pred, baseline, guidance_scale,
                        guided_channels, learned_variance, log_var_max, log_var_min, sigma, add_noise, noise, seed,
                        step, offset);
        py::gil_scoped_release release;
        cuda_step(p, code, device, stream);
      },
      FX_STEP_ARGS, py::arg("stream") = 0, py::arg("device") = 0, kStepCudaDoc);

  m.def("open_arena_bytes", &open_arena_bytes,
        "Capacity summed over the arenas open in this process (0 once all are closed or destroyed).");
  py::class_<HostBlock>(m, "HostBlock", py::buffer_protocol(),
                        "A block of a host arena as a writable byte buffer (numpy.frombuffer makes the view). "
                        "It keeps the arena's memory alive, past close(), and makes reset() refuse while it lives.")
      .def_buffer([](HostBlock& b) {
        return py::buffer_info(reinterpret_cast<void*>(b.ptr), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.nbytes)}, {static_cast<py::ssize_t>(1)}, false);
      })
      .def_readonly("ptr", &HostBlock::ptr)
      .def_readonly("nbytes", &HostBlock::nbytes);
  py::class_<Arena>(m, "Arena", "One 256-byte-aligned allocation carved into blocks (device -1: host memory).")
      .def(py::init<size_t, int>(), py::arg("nbytes"), py::arg("device") = -1)
      .def("block", &Arena::block, py::arg("nbytes"), py::arg("align") = kArenaAlign,
           "Address of a new block of nbytes aligned to align (ArenaFullError when it does not fit).")
      .def("host_block", &Arena::host_block, py::arg("nbytes"), py::arg("align") = kArenaAlign,
           "A new block of a host arena as a HostBlock, which owns a share of the memory.")
      .def("reset", &Arena::reset,
           "Release every block at once (the allocation stays); RuntimeError while HostBlocks are alive.")
      .def("close", &Arena::close,
           "Give the allocation up; idempotent. Freed now, or when the last HostBlock of it goes.")
      .def_property_readonly("ptr", &Arena::ptr)
      .def_property_readonly("capacity", &Arena::capacity)
      .def_property_readonly("used", &Arena::used)
      .def_property_readonly("closed", &Arena::closed)
      .def_property_readonly("device", &Arena::device);
}
