// Runs the CUDA kernels of ../kernels on the CPU, for tests on machines without a GPU.
//
// Every thread of a block is a fiber (ucontext) on the calling thread, run in turn until it
// reaches a barrier or ends; blocks run one after another. So barriers, shared memory and warp
// shuffles behave as on the GPU for kernels written to the rules in common.cuh: `__shared__`
// becomes `static` (one copy, shared by the block's threads), `__syncthreads` a barrier of the
// block, and a shuffle an exchange through a per-warp slot array between two barriers of the
// warp. A barrier that can never complete (threads of a warp diverging around a shuffle, a
// thread returning before a `__syncthreads` others wait at) aborts with a message. It checks the
// kernels' logic (indexing, reductions, masking), not their speed, and not the GPU's rounding
// of expf/logf.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned int x, y, z, w;
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// Switching fibers: on x86-64 a few instructions (the callee-saved registers and the stack
// pointer; ucontext's swapcontext also makes a system call each time), else ucontext.
#if defined(__x86_64__)
extern "C" void emulated_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl emulated_switch
    .type emulated_switch, @function
emulated_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emulated_switch, .-emulated_switch
)");
#endif

struct EmulatedFiber {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    char* stack = nullptr;
    int waiting = -1;  // -1: runnable; 0: the block's barrier; 1 + w: warp w's barrier
    bool done = false;
};

struct EmulatedBlock {
#if defined(__x86_64__)
    void* scheduler_sp = nullptr;
#else
    ucontext_t scheduler;
#endif
    std::vector<EmulatedFiber> fibers;
    std::vector<uint64_t> lanes;  // one exchange slot per thread
    unsigned current = 0;
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

// Waits at barrier `which` (0: block, 1 + w: warp w): back to the scheduler until released.
inline void emulated_wait(int which) {
    EmulatedBlock* b = emulated_block;
    EmulatedFiber& f = b->fibers[b->current];
    f.waiting = which;
#if defined(__x86_64__)
    emulated_switch(&f.sp, b->scheduler_sp);
#else
    swapcontext(&f.ctx, &b->scheduler);
#endif
}

inline void __syncthreads() { emulated_wait(0); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    const unsigned tid = emulated_tid(), base = tid & ~31u;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emulated_block->lanes[tid] = bits;
    emulated_wait(1 + (int)(tid >> 5));
    bits = emulated_block->lanes[base + ((tid - base) ^ (unsigned)mask)];
    emulated_wait(1 + (int)(tid >> 5));
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

// The body each fiber runs: set by emulate_launch, read by the fiber's entry.
inline void (*emulated_body)(void*) = nullptr;
inline void* emulated_body_arg = nullptr;

inline void emulated_fiber_entry() {
    emulated_body(emulated_body_arg);
    EmulatedBlock* b = emulated_block;
    b->fibers[b->current].done = true;
#if defined(__x86_64__)
    emulated_switch(&b->fibers[b->current].sp, b->scheduler_sp);  // never resumed
    std::abort();
#endif
    // ucontext: uc_link returns to the scheduler.
}

// Runs `body` as a grid of grid x block threads. blockDim must be a multiple of 32 threads.
template <class F>
void emulate_launch(dim3 grid, dim3 block, F body) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z, warps = (n + 31) / 32;
    EmulatedBlock b;
    // Fiber stacks, kept from launch to launch (launches are serialised by the caller).
    constexpr size_t stack_bytes = 128 * 1024;
    static std::vector<std::unique_ptr<char[]>> stacks;
    while (stacks.size() < n) stacks.emplace_back(new char[stack_bytes]);
    b.fibers.resize(n);
    for (unsigned t = 0; t < n; ++t) b.fibers[t].stack = stacks[t].get();
    b.lanes.resize(n);
    emulated_block = &b;
    emulated_body = [](void* p) { (*static_cast<F*>(p))(); };
    emulated_body_arg = &body;
    auto thread_of = [&](unsigned tid) {
        return dim3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
    };
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3{bx, by, bz};
                for (auto& f : b.fibers) {
                    f.waiting = -1;
                    f.done = false;
#if defined(__x86_64__)
                    // A frame emulated_switch pops into emulated_fiber_entry: six saved
                    // registers, then the return address, with the stack 16-byte aligned
                    // plus 8 at entry as after a call.
                    auto top = reinterpret_cast<uintptr_t>(f.stack + stack_bytes) & ~uintptr_t(15);
                    auto* frame = reinterpret_cast<void**>(top) - 8;
                    for (int i = 0; i < 6; ++i) frame[i] = nullptr;
                    frame[6] = reinterpret_cast<void*>(&emulated_fiber_entry);
                    frame[7] = nullptr;
                    f.sp = frame;
#else
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = stack_bytes;
                    f.ctx.uc_link = &b.scheduler;
                    makecontext(&f.ctx, emulated_fiber_entry, 0);
#endif
                }
                for (;;) {
                    bool ran = false;
                    for (unsigned tid = 0; tid < n; ++tid) {
                        EmulatedFiber& f = b.fibers[tid];
                        if (f.done || f.waiting >= 0) continue;
                        b.current = tid;
                        threadIdx = thread_of(tid);
#if defined(__x86_64__)
                        emulated_switch(&b.scheduler_sp, f.sp);
#else
                        swapcontext(&b.scheduler, &f.ctx);
#endif
                        ran = true;
                    }
                    // Release the barriers every participant has reached (a finished thread
                    // counts as arrived at the block's barrier, as a returned GPU thread does).
                    unsigned at_block = 0, done = 0;
                    std::vector<unsigned> at_warp(warps, 0);
                    for (auto& f : b.fibers) {
                        done += f.done;
                        at_block += f.waiting == 0;
                        if (f.waiting > 0) at_warp[f.waiting - 1]++;
                    }
                    if (done == n) break;
                    bool released = false;
                    if (at_block > 0 && at_block + done == n) {
                        for (auto& f : b.fibers)
                            if (f.waiting == 0) f.waiting = -1;
                        released = true;
                    }
                    for (unsigned w = 0; w < warps; ++w)
                        if (at_warp[w] == std::min(32u, n - 32 * w)) {
                            for (auto& f : b.fibers)
                                if (f.waiting == (int)(1 + w)) f.waiting = -1;
                            released = true;
                        }
                    if (!ran && !released) {
                        std::fprintf(stderr, "emulated kernel deadlocked: a barrier or shuffle that not every thread reaches\n");
                        std::abort();
                    }
                }
            }
    emulated_block = nullptr;
}
