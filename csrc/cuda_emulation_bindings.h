// The CUDA emulation's controls as Python functions, shared by the emulation
// test modules (cuda_emulation_bindings.cpp: the emulated jax_roi kernels;
// tests/cuda_emulation/toy_module.cpp: the runtime's own tests). Only in
// builds with JAX_ROI_CUDA_EMULATION.
#ifndef JAX_ROI_CSRC_CUDA_EMULATION_BINDINGS_H_
#define JAX_ROI_CSRC_CUDA_EMULATION_BINDINGS_H_

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>

#include "core/cuda_compat.h"

namespace jax_roi {
namespace bindings {

// set_seed/seed (block and thread order), set_shuffle, set_verbose,
// set_max_dynamic_shared_bytes/max_dynamic_shared_bytes, reset_stats, stats
// (a dict of the emulation's counters), last_error_message.
inline void def_emulation_controls(pybind11::module_& m) {
  namespace py = pybind11;
  namespace emu = ::jax_roi::cuda::emulation;
  m.def("set_seed", [](uint64_t s) { emu::set_seed(s); });
  m.def("seed", [] { return emu::seed(); });
  m.def("set_shuffle", [](bool on) { emu::set_shuffle(on); });
  m.def("set_verbose", [](bool on) { emu::set_verbose(on); });
  m.def("set_max_dynamic_shared_bytes", [](size_t n) { emu::set_max_dynamic_shared_bytes(n); });
  m.def("max_dynamic_shared_bytes", [] { return emu::max_dynamic_shared_bytes(); });
  m.def("reset_stats", [] { emu::reset_stats(); });
  m.def("stats", [] {
    const emu::Stats s = emu::stats();
    py::dict d;
    d["launches"] = s.launches;
    d["failed_launches"] = s.failed_launches;
    d["blocks"] = s.blocks;
    d["threads"] = s.threads;
    d["barriers"] = s.barriers;
    d["warp_syncs"] = s.warp_syncs;
    d["suspensions"] = s.suspensions;
    d["fibers_created"] = s.fibers_created;
    d["undefined_shuffle_reads"] = s.undefined_shuffle_reads;
    d["memsets"] = s.memsets;
    d["func_attribute_queries"] = s.func_attribute_queries;
    return d;
  });
  m.def("last_error_message", [] { return emu::last_error_message(); });
}

}  // namespace bindings
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CUDA_EMULATION_BINDINGS_H_
