// Runs the CUDA kernels of ../kernels on the CPU, for tests on machines without a GPU.
//
// Every thread of a block is a std::thread (blocks run one after another), so barriers, shared
// memory and warp shuffles behave as on the GPU for kernels written to the rules in common.cuh:
// `__shared__` becomes `static` (one copy, shared by the block's threads), `__syncthreads` a
// barrier of the block, and a shuffle an exchange through a per-warp slot array between two
// barriers of the warp. It checks the kernels' logic (indexing, reductions, masking), not their
// speed, and not the GPU's rounding of expf/logf.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned int x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

struct EmulatedBlock {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<uint64_t> lanes;  // one exchange slot per thread
};
inline EmulatedBlock* emulated_block = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

inline unsigned emulated_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline void __syncthreads() { emulated_block->block->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    const unsigned tid = emulated_tid(), base = tid & ~31u;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emulated_block->lanes[tid] = bits;
    emulated_block->warps[tid >> 5]->arrive_and_wait();
    bits = emulated_block->lanes[base + ((tid - base) ^ (unsigned)mask)];
    emulated_block->warps[tid >> 5]->arrive_and_wait();
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
using std::max;
using std::min;
// fmaxf, expf, logf, sqrtf: <cmath>'s, in the global namespace.

// Runs `body` as a grid of grid x block threads. blockDim must be a multiple of 32 threads.
template <class F>
void emulate_launch(dim3 grid, dim3 block, F body) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                // Fresh barriers per block: a finished thread leaves its block's barrier.
                EmulatedBlock b;
                b.block = std::make_unique<std::barrier<>>(n);
                for (unsigned w = 0; w < (n + 31) / 32; ++w)
                    b.warps.push_back(std::make_unique<std::barrier<>>(32));
                b.lanes.resize(n);
                emulated_block = &b;
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (unsigned tid = 0; tid < n; ++tid)
                    threads.emplace_back([&, tid] {
                        blockIdx = dim3{bx, by, bz};
                        threadIdx = dim3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
                        body();
                        // A thread that has returned no longer holds up the block's barriers.
                        b.block->arrive_and_drop();
                    });
                for (auto& t : threads) t.join();
            }
    emulated_block = nullptr;
}
