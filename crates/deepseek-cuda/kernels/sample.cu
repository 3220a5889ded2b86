// Greedy sampling on the GPU: only the chosen ids come back to the host.

// out[r] = the index of row r's largest value (the lowest index among equals, as the CPU's
// `sampler::argmax`), one block per row.
extern "C" __global__ void argmax_rows(const float* __restrict__ x, int* __restrict__ out, int cols) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* row = x + (long)blockIdx.x * cols;
    float v = NEG_INF;
    int idx = cols;  // "none yet": loses every tie
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        if (row[i] > v || idx == cols) { v = row[i]; idx = i; }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (best_v[w] > v || (best_v[w] == v && best_i[w] < idx)) { v = best_v[w]; idx = best_i[w]; }
        out[blockIdx.x] = idx < cols ? idx : 0;
    }
}
