// MLA on the paged latent cache (DeepSeek-V2 §2.1): a cache row is `[c_kv | k_pe]` (kv_lora_rank
// + qk_rope_head_dim values) per token and layer; a block holds BLOCK_TOKENS rows of every layer,
// as the CPU's `deepseek_cache::BlockPool` lays them out (row of token p, layer l:
// cache + table[p / block_tokens] * block_stride + layer_offset + (p % block_tokens) * row_w).
//
// Absorbed decode (FlashMLA's scheme): each head's query is `[W_UK[h]^T q_nope | q_pe]`, one
// `row_w`-long vector scored straight against cached rows; the values are the latents c_kv; the
// softmax-weighted latent sum goes through W_UV afterwards (a batched GEMM on the host side).
// The context is cut into splits run as separate blocks (long sequences use the whole GPU), merged
// by their log-sum-exp.

#define MLA_HEADS_PER_BLOCK 8   // one warp per head; the 8 heads share every cache tile read
#define MLA_TILE_ROWS 8
#define MLA_MAX_ROW 640         // row_w limit (DeepSeek: 512 + 64): q and tile fit 48 KB
#define MLA_MAX_LORA_PER_LANE 18

// Writes each new token's row into its cache slot: slots[t] = block * block_tokens + position in
// the block.
extern "C" __global__ void mla_append_rows(const float* __restrict__ rows, float* __restrict__ cache,
                                           const int* __restrict__ slots, int row_w, int block_tokens,
                                           long block_stride, long layer_offset) {
    const int slot = slots[blockIdx.x];
    float* dst = cache + (long)(slot / block_tokens) * block_stride + layer_offset +
                 (long)(slot % block_tokens) * row_w;
    for (int i = threadIdx.x; i < row_w; i += blockDim.x) dst[i] = rows[(long)blockIdx.x * row_w + i];
}

// One block per (token, group of 8 heads, split). q: [tokens][heads][row_w]. Token t belongs to
// sequence token_seq[t] and sees its first ctx_lens[t] rows. Writes, per (token, head, split), the
// split's normalised latent sum (lora values) and its log-sum-exp (-inf for an empty split).
extern "C" __global__ void mla_decode_partial(
    const float* __restrict__ q, const float* __restrict__ cache, const int* __restrict__ block_tables,
    const int* __restrict__ token_seq, const int* __restrict__ ctx_lens, float* __restrict__ part_out,
    float* __restrict__ part_lse, int heads, int lora, int row_w, int max_blocks, int block_tokens,
    long block_stride, long layer_offset, int split_len, int splits, float scale) {
    __shared__ float qs[MLA_HEADS_PER_BLOCK][MLA_MAX_ROW];
    __shared__ float tile[MLA_TILE_ROWS][MLA_MAX_ROW];
    const int t = blockIdx.x, split = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.y * MLA_HEADS_PER_BLOCK + warp;
    const int seq = token_seq[t], n = ctx_lens[t];
    const int start = split * split_len;
    const int end = min(n, start + split_len);
    const int* table = block_tables + (long)seq * max_blocks;

    for (int i = threadIdx.x; i < MLA_HEADS_PER_BLOCK * row_w; i += blockDim.x) {
        const int hh = blockIdx.y * MLA_HEADS_PER_BLOCK + i / row_w;
        qs[i / row_w][i % row_w] = hh < heads ? q[((long)t * heads + hh) * row_w + i % row_w] : 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    // Each lane owns latent columns lane + 32 j. The loops over j run to the constant bound
    // (unrolled, so acc stays in registers) and skip columns past the latent.
    float acc[MLA_MAX_LORA_PER_LANE];
    const int per_lane = lora / 32;
#pragma unroll
    for (int j = 0; j < MLA_MAX_LORA_PER_LANE; ++j) acc[j] = 0.0f;

    for (int r0 = start; r0 < end; r0 += MLA_TILE_ROWS) {
        const int rows = min(MLA_TILE_ROWS, end - r0);
        __syncthreads();  // the last tile's readers are done (and, first time, q is loaded)
        for (int i = threadIdx.x; i < rows * row_w; i += blockDim.x) {
            const int p = r0 + i / row_w;
            tile[i / row_w][i % row_w] = cache[(long)table[p / block_tokens] * block_stride + layer_offset +
                                               (long)(p % block_tokens) * row_w + i % row_w];
        }
        __syncthreads();
        float s[MLA_TILE_ROWS];
        float tile_max = NEG_INF;
#pragma unroll
        for (int i = 0; i < MLA_TILE_ROWS; ++i) {
            float d = 0.0f;
            if (i < rows)
                for (int c = lane; c < row_w; c += 32) d += qs[warp][c] * tile[i][c];
            d = warp_sum(d);
            s[i] = i < rows ? d * scale : NEG_INF;
            tile_max = fmaxf(tile_max, s[i]);
        }
        const float m_new = fmaxf(m, tile_max);
        const float corr = expf(m - m_new);  // m = -inf the first time: 0
        l *= corr;
#pragma unroll
        for (int j = 0; j < MLA_MAX_LORA_PER_LANE; ++j) acc[j] *= corr;
        for (int i = 0; i < rows; ++i) {
            const float p = expf(s[i] - m_new);
            l += p;
#pragma unroll
            for (int j = 0; j < MLA_MAX_LORA_PER_LANE; ++j)
                if (j < per_lane) acc[j] += p * tile[i][lane + 32 * j];
        }
        m = m_new;
    }
    if (h < heads) {
        const long o = ((long)t * heads + h) * splits + split;
#pragma unroll
        for (int j = 0; j < MLA_MAX_LORA_PER_LANE; ++j)
            if (j < per_lane) part_out[o * lora + lane + 32 * j] = l > 0.0f ? acc[j] / l : 0.0f;
        if (lane == 0) part_lse[o] = l > 0.0f ? m + logf(l) : NEG_INF;
    }
}

// out[t][h] = the splits' latent sums weighted by exp(lse - max lse), one block per (token, head).
extern "C" __global__ void mla_decode_combine(const float* __restrict__ part_out,
                                              const float* __restrict__ part_lse,
                                              float* __restrict__ out, int lora, int splits) {
    const long th = blockIdx.x;
    const float* lse = part_lse + th * splits;
    float mx = NEG_INF;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, lse[s]);
    float total = 0.0f;
    for (int s = 0; s < splits; ++s) total += lse[s] == NEG_INF ? 0.0f : expf(lse[s] - mx);
    for (int c = threadIdx.x; c < lora; c += blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < splits; ++s)
            if (lse[s] != NEG_INF) v += expf(lse[s] - mx) * part_out[(th * splits + s) * lora + c];
        out[th * lora + c] = total > 0.0f ? v / total : 0.0f;
    }
}
