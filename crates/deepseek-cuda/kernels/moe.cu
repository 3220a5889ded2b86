// Decode-time expert products without a trip to the host: each (token, chosen expert) slot reads
// its expert's bf16 rows by the id the router wrote on the GPU (llama.cpp's mul_mat_id idea), so
// a decode step's MoE needs no synchronisation and fits in a CUDA graph.

// out[s, r] = dot(W[e(s)][r], x(s)) for every slot s < slots, row r < rows.
// W: [experts][rows][cols] (bf16 or f32). e(s) = ids[s], or 0 when ids is null (a dense GEMV).
// x(s): x + s * cols when x_per_slot (the down projection's per-slot inputs), else the token's
// row x + (s / top_k) * cols. One warp per output row, 8 rows a block; bf16 lanes read 8 values
// at a time when rows are 16-byte aligned (cols % 8 == 0).
__device__ __forceinline__ float moe_dot(const bf16_t* row, const float* xs, int cols, int lane) {
    float acc = 0.0f;
    const int vec_end = (cols % 8 == 0) ? cols : 0;
    for (int c = lane * 8; c < vec_end; c += 256) {
        const uint4 q = *(const uint4*)(row + c);
        const unsigned int v[4] = {q.x, q.y, q.z, q.w};
        for (int j = 0; j < 4; ++j) {
            acc += __uint_as_float(v[j] << 16) * xs[c + 2 * j];
            acc += __uint_as_float(v[j] & 0xffff0000u) * xs[c + 2 * j + 1];
        }
    }
    for (int c = vec_end + lane; c < cols; c += 32) acc += bf16_to_f32(row[c]) * xs[c];
    return acc;
}

__device__ __forceinline__ float moe_dot(const float* row, const float* xs, int cols, int lane) {
    float acc = 0.0f;
    for (int c = lane; c < cols; c += 32) acc += row[c] * xs[c];
    return acc;
}

template <class W>
__device__ __forceinline__ void moe_gemv(const W* __restrict__ w, const float* __restrict__ x,
                                         const int* __restrict__ ids, float* __restrict__ out,
                                         int rows, int cols, int top_k, int x_per_slot) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + warp;
    const int s = blockIdx.y;
    if (r >= rows) return;  // whole warps leave together: no barrier below
    const long e = ids ? ids[s] : 0;
    const W* row = w + (e * rows + r) * (long)cols;
    const float* xs = x + (long)(x_per_slot ? s : s / top_k) * cols;
    const float acc = warp_sum(moe_dot(row, xs, cols, lane));
    if (lane == 0) out[(long)s * rows + r] = acc;
}

extern "C" __global__ void moe_gemv_bf16(const bf16_t* __restrict__ w, const float* __restrict__ x,
                                         const int* __restrict__ ids, float* __restrict__ out,
                                         int rows, int cols, int top_k, int x_per_slot) {
    moe_gemv(w, x, ids, out, rows, cols, top_k, x_per_slot);
}

extern "C" __global__ void moe_gemv_f32(const float* __restrict__ w, const float* __restrict__ x,
                                        const int* __restrict__ ids, float* __restrict__ out,
                                        int rows, int cols, int top_k, int x_per_slot) {
    moe_gemv(w, x, ids, out, rows, cols, top_k, x_per_slot);
}

// out[t] (+)= sum_k weights[t, k] * y[t * top_k + k]: the routed experts' outputs, weighted.
extern "C" __global__ void moe_combine_f32(const float* __restrict__ y, const float* __restrict__ weights,
                                           float* __restrict__ out, int cols, int tokens, int top_k,
                                           int accumulate) {
    const long n = (long)tokens * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long t = i / cols;
        const int c = (int)(i - t * cols);
        float acc = accumulate ? out[i] : 0.0f;
        for (int k = 0; k < top_k; ++k) acc += weights[t * top_k + k] * y[(t * top_k + k) * cols + c];
        out[i] = acc;
    }
}
