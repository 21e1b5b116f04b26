// The Python extension module: it only exposes the XLA FFI handlers, as
// capsules keyed by target name, one dict per platform.
#include <pybind11/pybind11.h>

#include "xla/ffi/api/api.h"

namespace py = pybind11;

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiPoolForwardCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiPoolBackwardCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiAlignForwardCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiAlignBackwardCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiAlignBoxGradCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiMultiScaleForwardCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiMultiScaleBackwardCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiMultiScaleBoxGradCpu);
#ifdef JAX_ROI_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiPoolForwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiPoolBackwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiAlignForwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiAlignBackwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiAlignBoxGradCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiMultiScaleForwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiMultiScaleBackwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiMultiScaleBoxGradCuda);
#endif

namespace {

template <typename Fn>
py::capsule capsule(Fn* fn) {
  return py::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

PYBIND11_MODULE(_jax_roi, m) {
  m.doc() = "XLA FFI handlers of jax_roi (use jax_roi, not this module).";
  // The target names carry the ABI version of their binding (operands,
  // results, attributes). A change to a binding gets a new version, so that
  // serialized (jax.export) artifacts never call a handler they do not match.
  m.def("cpu_targets", [] {
    py::dict d;
    d["jax_roi_roi_pool_fwd_v1"] = capsule(JaxRoiPoolForwardCpu);
    d["jax_roi_roi_pool_bwd_v1"] = capsule(JaxRoiPoolBackwardCpu);
    d["jax_roi_roi_align_fwd_v1"] = capsule(JaxRoiAlignForwardCpu);
    d["jax_roi_roi_align_bwd_v1"] = capsule(JaxRoiAlignBackwardCpu);
    d["jax_roi_roi_align_box_grad_v1"] = capsule(JaxRoiAlignBoxGradCpu);
    d["jax_roi_multi_scale_roi_align_fwd_v1"] = capsule(JaxRoiMultiScaleForwardCpu);
    d["jax_roi_multi_scale_roi_align_bwd_v1"] = capsule(JaxRoiMultiScaleBackwardCpu);
    d["jax_roi_multi_scale_roi_align_box_grad_v1"] = capsule(JaxRoiMultiScaleBoxGradCpu);
    return d;
  });
  m.def("cuda_targets", [] {
    py::dict d;
#ifdef JAX_ROI_WITH_CUDA
    d["jax_roi_roi_pool_fwd_v1"] = capsule(JaxRoiPoolForwardCuda);
    d["jax_roi_roi_pool_bwd_v1"] = capsule(JaxRoiPoolBackwardCuda);
    d["jax_roi_roi_align_fwd_v1"] = capsule(JaxRoiAlignForwardCuda);
    d["jax_roi_roi_align_bwd_v1"] = capsule(JaxRoiAlignBackwardCuda);
    d["jax_roi_roi_align_box_grad_v1"] = capsule(JaxRoiAlignBoxGradCuda);
    d["jax_roi_multi_scale_roi_align_fwd_v1"] = capsule(JaxRoiMultiScaleForwardCuda);
    d["jax_roi_multi_scale_roi_align_bwd_v1"] = capsule(JaxRoiMultiScaleBackwardCuda);
    d["jax_roi_multi_scale_roi_align_box_grad_v1"] = capsule(JaxRoiMultiScaleBoxGradCuda);
#endif
    return d;
  });
  m.attr("with_cuda") =
#ifdef JAX_ROI_WITH_CUDA
      true;
#else
      false;
#endif
  m.attr("ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
}
