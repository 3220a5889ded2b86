// The kernels of ../kernels compiled for the CPU, behind one C entry point shaped like the
// driver's cuLaunchKernel: a kernel name, grid and block sizes, and an array of pointers to the
// argument values. The Rust launch code (src/ops.rs) is thereby the same for the GPU and for this
// emulation; device pointers are host pointers here.
#include "cuda_emulation.h"

#include <cstring>
#include <mutex>
#include <utility>

#include "../kernels/common.cuh"
#include "../kernels/elementwise.cu"
#include "../kernels/attention.cu"
#include "../kernels/moe.cu"
#include "../kernels/rope.cu"
#include "../kernels/router.cu"
#include "../kernels/sample.cu"

template <class... A, std::size_t... I>
static void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
static void launch(void (*f)(A...), dim3 grid, dim3 block, void** args) {
    emulate_launch(grid, block, [&] { call_with(f, args, std::index_sequence_for<A...>{}); });
}

#define KERNEL(name) {#name, [](dim3 g, dim3 b, void** a) { launch(name, g, b, a); }}

struct Entry {
    const char* name;
    void (*run)(dim3, dim3, void**);
};

static const Entry kernels[] = {
    KERNEL(rms_norm_f32),      KERNEL(add_f32),          KERNEL(silu_mul_f32),
    KERNEL(embed_rows_f32),    KERNEL(embed_rows_bf16),  KERNEL(f32_to_bf16_rows),  KERNEL(copy_rows_f32),
    KERNEL(rope_f32),          KERNEL(route_topk),       KERNEL(moe_gemv_bf16),
    KERNEL(moe_gemv_f32),
    KERNEL(moe_combine_f32),   KERNEL(argmax_rows),      KERNEL(cache_append_rows),
    KERNEL(attention_partial), KERNEL(attention_combine),
};

// 0: launched; 1: no kernel of that name.
extern "C" int emulated_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                               unsigned by, unsigned bz, void** args) {
    // One launch at a time: the emulation's grid state is global, as a GPU stream is in order.
    static std::mutex one_at_a_time;
    std::lock_guard<std::mutex> lock(one_at_a_time);
    for (const Entry& e : kernels)
        if (std::strcmp(e.name, name) == 0) {
            e.run(dim3{gx, gy, gz}, dim3{bx, by, bz}, args);
            return 0;
        }
    return 1;
}
