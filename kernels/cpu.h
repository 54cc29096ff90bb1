// The CUDA dialect that kernels/*.cu use, for a host C++ compiler: each kernel's own source runs on the CPU
// (tests/unit/test_kernels.py compiles it with g++ against this header) and must give what the GPU gives.
//
// The kernels use grid-stride loops and no shared memory, barriers, warp intrinsics or inter-thread order,
// so running the threads of a launch one after another is a valid schedule of them: `launch` sets the
// index variables and calls the kernel once per (block, thread). The index variables are C++17 inline
// variables: one object shared by every translation unit, as on the GPU, whichever file includes this.
// Compile with -ffp-contract=off: __fadd_rn and __fmul_rn round each operation, as on the GPU.
#pragma once

#include <cstdint>
#include <cstring>

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// One thread at a time, so the read-modify-write needs no atomicity; it returns the old value as CUDA's does.
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
    const unsigned long long old = *address;
    *address = old + value;
    return old;
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
    gridDim = grid;
    blockDim = block;
    for (unsigned int b = 0; b < grid.x; ++b) {
        for (unsigned int t = 0; t < block.x; ++t) {
            blockIdx = dim3(b);
            threadIdx = dim3(t);
            kernel(args...);
        }
    }
}
