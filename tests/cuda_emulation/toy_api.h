// Host wrappers of the toy kernels (toy_kernels.cu.h), declared in namespace
// TOY_NAMESPACE. No include guard: the test module includes this once per
// architecture build, each time with another TOY_NAMESPACE; with pybind11
// included first it also defines TOY_NAMESPACE::bind(module), the Python
// bindings of that build's wrappers (NumPy arrays of the exact dtype,
// C-contiguous, outputs written in place; each returns the cudaError_t).
#include <cstddef>
#include <cstdint>

#include "core/cuda_compat.h"

namespace TOY_NAMESPACE {

int arch();
cudaError_t axpb(cudaStream_t s, dim3 grid, dim3 block, size_t smem, const float* x, float* out,
                 int64_t n, float a, float b);
cudaError_t identify(cudaStream_t s, dim3 grid, dim3 block, int* visits, int64_t* who);
cudaError_t racy_sum(cudaStream_t s, const float* x, float* out, int64_t n);
cudaError_t atomics(cudaStream_t s, const int* x, int64_t n, int* hist, int bins, unsigned* count,
                    int* max_value, unsigned long long* cas_count, double* dsum, unsigned* wrap,
                    int* cas_winner);
cudaError_t block_sum(cudaStream_t s, const int* x, int64_t n, int* out, bool sync);
cudaError_t barrier_predicates(cudaStream_t s, const int* x, int* out, unsigned blocks,
                               unsigned threads);
cudaError_t warp_sum(cudaStream_t s, const int* x, int64_t n, int* out, unsigned threads);
cudaError_t warp_sum_divergent(cudaStream_t s, const unsigned* x, unsigned* out, unsigned blocks);
cudaError_t warp_ops(cudaStream_t s, const int* x, int* out, unsigned blocks, unsigned threads);
cudaError_t reverse(cudaStream_t s, const float* x, float* y, unsigned blocks, unsigned threads,
                    size_t smem);
cudaError_t early_exit_barrier(cudaStream_t s, int* out, unsigned threads, unsigned active);
cudaError_t deadlock(cudaStream_t s, int* out);
cudaError_t bad_mask(cudaStream_t s, int* out);
cudaError_t spin(cudaStream_t s, float* out, int64_t n, unsigned blocks, unsigned threads,
                 int rounds);

#if defined(PYBIND11_MODULE) && !defined(__CUDACC__)
inline void bind(pybind11::module_ m) {
  namespace py = pybind11;
  using toy_module::data;
  using toy_module::to_dim3;
  const cudaStream_t st = nullptr;
  m.attr("ARCH") = arch();
  m.def("axpb", [=](py::tuple grid, py::tuple block, size_t smem, py::array x, py::array out,
                    float a, float b) {
    return static_cast<int>(axpb(st, to_dim3(grid), to_dim3(block), smem, data<float>(x, "x"),
                                 data<float>(out, "out"), static_cast<int64_t>(x.size()), a, b));
  });
  m.def("identify", [=](py::tuple grid, py::tuple block, py::array visits, py::array who) {
    return static_cast<int>(identify(st, to_dim3(grid), to_dim3(block), data<int>(visits, "visits"),
                                     data<int64_t>(who, "who")));
  });
  m.def("racy_sum", [=](py::array x, py::array out) {
    return static_cast<int>(
        racy_sum(st, data<float>(x, "x"), data<float>(out, "out"), static_cast<int64_t>(x.size())));
  });
  m.def("atomics", [=](py::array x, py::array hist, py::array count, py::array max_value,
                       py::array cas_count, py::array dsum, py::array wrap, py::array winner) {
    return static_cast<int>(atomics(
        st, data<int>(x, "x"), static_cast<int64_t>(x.size()), data<int>(hist, "hist"),
        static_cast<int>(hist.size()), data<unsigned>(count, "count"),
        data<int>(max_value, "max_value"), data<unsigned long long>(cas_count, "cas_count"),
        data<double>(dsum, "dsum"), data<unsigned>(wrap, "wrap"), data<int>(winner, "winner")));
  });
  // Runs without the GIL: Python threads can launch concurrently, as XLA's
  // threads do.
  m.def("block_sum", [=](py::array x, py::array out, bool sync) {
    const int* xp = data<int>(x, "x");
    int* op = data<int>(out, "out");
    const int64_t n = static_cast<int64_t>(x.size());
    py::gil_scoped_release release;
    return static_cast<int>(block_sum(st, xp, n, op, sync));
  });
  m.def("barrier_predicates", [=](py::array x, py::array out, unsigned blocks, unsigned threads) {
    return static_cast<int>(
        barrier_predicates(st, data<int>(x, "x"), data<int>(out, "out"), blocks, threads));
  });
  m.def("warp_sum", [=](py::array x, py::array out, unsigned threads) {
    return static_cast<int>(warp_sum(st, data<int>(x, "x"), static_cast<int64_t>(x.size()),
                                     data<int>(out, "out"), threads));
  });
  m.def("warp_sum_divergent", [=](py::array x, py::array out, unsigned blocks) {
    return static_cast<int>(
        warp_sum_divergent(st, data<unsigned>(x, "x"), data<unsigned>(out, "out"), blocks));
  });
  m.def("warp_ops", [=](py::array x, py::array out, unsigned blocks, unsigned threads) {
    return static_cast<int>(
        warp_ops(st, data<int>(x, "x"), data<int>(out, "out"), blocks, threads));
  });
  m.def("reverse", [=](py::array x, py::array y, unsigned blocks, unsigned threads, size_t smem) {
    return static_cast<int>(
        reverse(st, data<float>(x, "x"), data<float>(y, "y"), blocks, threads, smem));
  });
  m.def("early_exit_barrier", [=](py::array out, unsigned threads, unsigned active) {
    return static_cast<int>(early_exit_barrier(st, data<int>(out, "out"), threads, active));
  });
  m.def("deadlock",
        [=](py::array out) { return static_cast<int>(deadlock(st, data<int>(out, "out"))); });
  m.def("bad_mask",
        [=](py::array out) { return static_cast<int>(bad_mask(st, data<int>(out, "out"))); });
  m.def("spin", [=](py::array out, unsigned blocks, unsigned threads, int rounds) {
    return static_cast<int>(spin(st, data<float>(out, "out"), static_cast<int64_t>(out.size()),
                                 blocks, threads, rounds));
  });
}
#endif

}  // namespace TOY_NAMESPACE
