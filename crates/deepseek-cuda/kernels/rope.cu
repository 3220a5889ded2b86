// RoPE on a slice of every head, cos/sin read from a table the CPU filled ([max_pos][dim/2] cos,
// then [max_pos][dim/2] sin; YaRN's frequencies and magnitude are in it), so the GPU and the CPU
// rotate by the same numbers.
//
// One block per (token, head); thread i < dim/2 owns pair i. `interleaved`: pairs (2i, 2i+1),
// results laid out [evens | odds] as DeepSeek's reference permutes them; else pairs (i, i + dim/2).
extern "C" __global__ void rope_f32(float* __restrict__ x, const float* __restrict__ table,
                                    const int* __restrict__ positions, int heads, long token_stride,
                                    int head_stride, int offset, int dim, int max_pos, int interleaved) {
    const int t = blockIdx.x / heads, h = blockIdx.x % heads, half = dim / 2, i = threadIdx.x;
    float* v = x + t * token_stride + (long)h * head_stride + offset;
    const long pos = positions[t];
    float a = 0.0f, b = 0.0f, c = 0.0f, s = 0.0f;
    if (i < half) {
        a = interleaved ? v[2 * i] : v[i];
        b = interleaved ? v[2 * i + 1] : v[i + half];
        c = table[pos * half + i];
        s = table[(long)max_pos * half + pos * half + i];
    }
    __syncthreads();  // every pair read before any is overwritten (interleaved moves values)
    if (i < half) {
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}
