// Row-wise and element-wise kernels: RMSNorm, residual add, SwiGLU, embedding rows, bf16 casts.

// out[r] = x[r] / rms(x[r]) * w over the first `cols` values of each row, one block per row
// (sums in f32, as the CPU kernel). Strides let it normalise a slice of wider rows (MLA's latent
// inside `[c_kv | k_pe]`).
extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int cols, int x_stride,
                                        int out_stride, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (long)blockIdx.x * x_stride;
    float* orow = out + (long)blockIdx.x * out_stride;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) orow[i] = w[i] * (xr[i] * inv);
}

// a += b over n values.
extern "C" __global__ void add_f32(float* __restrict__ a, const float* __restrict__ b, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        a[i] += b[i];
}

// out[r, i] = silu(gu[r, i]) * gu[r, cols + i]: the fused gate|up projection's output, `rows`
// rows of 2*cols values, into `rows` rows of `cols`.
extern "C" __global__ void silu_mul_f32(const float* __restrict__ gu, float* __restrict__ out,
                                        int cols, long rows) {
    const long n = rows * cols;
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (long)gridDim.x * blockDim.x) {
        const long r = k / cols;
        const int i = (int)(k - r * cols);
        const float g = gu[r * 2 * cols + i];
        out[k] = g / (1.0f + expf(-g)) * gu[r * 2 * cols + cols + i];
    }
}

// out[t] = table[ids[t]] as f32, one block per token.
extern "C" __global__ void embed_rows_f32(const float* __restrict__ table, const int* __restrict__ ids,
                                          float* __restrict__ out, int cols) {
    const float* row = table + (long)ids[blockIdx.x] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[(long)blockIdx.x * cols + i] = row[i];
}

extern "C" __global__ void embed_rows_bf16(const bf16_t* __restrict__ table, const int* __restrict__ ids,
                                           float* __restrict__ out, int cols) {
    const bf16_t* row = table + (long)ids[blockIdx.x] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        out[(long)blockIdx.x * cols + i] = bf16_to_f32(row[i]);
}

// Activations rounded to bf16 for the tensor-core GEMMs.
extern "C" __global__ void f32_to_bf16_rows(const float* __restrict__ x, bf16_t* __restrict__ out, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = f32_to_bf16(x[i]);
}

// dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < cols: moving a slice of
// every row (MLA's q_pe into the absorbed query rows).
extern "C" __global__ void copy_rows_f32(const float* __restrict__ src, float* __restrict__ dst, long rows,
                                         int cols, int src_stride, int dst_stride) {
    const long n = rows * cols;
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (long)gridDim.x * blockDim.x) {
        const long r = k / cols;
        const int c = (int)(k - r * cols);
        dst[r * dst_stride + c] = src[r * src_stride + c];
    }
}
