// Placeholder translation unit; the CUDA kernels land beside it.
