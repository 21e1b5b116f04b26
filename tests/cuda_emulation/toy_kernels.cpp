// One architecture build of the toy kernels for the emulation's test module:
// compiled once per JAX_ROI_CUDA_ARCH value, with TOY_NAMESPACE=toy_<arch>.
#include "toy_kernels.cu.h"
