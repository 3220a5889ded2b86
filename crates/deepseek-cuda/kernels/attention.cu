// Attention on the paged cache. A block holds BLOCK_TOKENS rows of every layer, as the CPU's
// `deepseek_cache::BlockPool` lays them out (row of token p, layer l:
// cache + table[p / block_tokens] * block_stride + layer_offset + (p % block_tokens) * row_w).
//
// MLA (DeepSeek-V2 §2.1), absorbed as FlashMLA does it: a row is `[c_kv | k_pe]` (kv_lora_rank
// + qk_rope_head_dim values); each head's query is `[W_UK[h]^T q_nope | q_pe]`, one row-long
// vector scored straight against cached rows; the values are the latents c_kv; the
// softmax-weighted latent sum goes through W_UV afterwards (a batched GEMM on the host side).
// Llama (DeepSeek LLM): rows `[K | V]` of every KV head, query heads in groups per KV head.
// The context is cut into splits run as separate blocks (long sequences use the whole GPU),
// merged by their log-sum-exp.

#define ATTN_HEADS_PER_BLOCK 8   // one warp per head; the 8 heads share every cache tile read
#define ATTN_TILE_ROWS 8
#define ATTN_MAX_ROW 640         // key (+ separate value) width limit (DeepSeek: 512 + 64): q and tile fit 48 KB
#define ATTN_MAX_VALUE_PER_LANE 18  // value width limit: 18 x 32 = 576

// Writes each new token's row into its cache slot: slots[t] = block * block_tokens + position in
// the block.
extern "C" __global__ void cache_append_rows(const float* __restrict__ rows, float* __restrict__ cache,
                                           const int* __restrict__ slots, int row_w, int block_tokens,
                                           long block_stride, long layer_offset) {
    const int slot = slots[blockIdx.x];
    float* dst = cache + (long)(slot / block_tokens) * block_stride + layer_offset +
                 (long)(slot % block_tokens) * row_w;
    for (int i = threadIdx.x; i < row_w; i += blockDim.x) dst[i] = rows[(long)blockIdx.x * row_w + i];
}

// Attention of query heads over the paged rows, one block per (token, group of 8 query heads
// of one KV head, split). Where a row's keys and values lie (as the CPU's `RowLayout`):
// KV head j's key is row[key_offset + j * kv_stride ..][..key_len], its value
// row[value_offset + j * kv_stride ..][..value_len]. MLA: one KV head, the key the whole row
// [c_kv | k_pe], the value c_kv (inside the key: read from the same tile). Llama: rows [K | V],
// `group` query heads per KV head. q: [tokens][heads][key_len], heads = kv_heads * group.
// Token t belongs to sequence token_seq[t] and sees its first ctx_lens[t] rows. Writes, per
// (token, head, split), the split's normalised value sum and its log-sum-exp (-inf if empty).
extern "C" __global__ void attention_partial(
    const float* __restrict__ q, const float* __restrict__ cache, const int* __restrict__ block_tables,
    const int* __restrict__ token_seq, const int* __restrict__ ctx_lens, float* __restrict__ part_out,
    float* __restrict__ part_lse, int group, int kv_heads, int row_w, int key_offset, int key_len,
    int value_offset, int value_len, int kv_stride, int max_blocks, int block_tokens,
    long block_stride, long layer_offset, int split_len, int splits, float scale) {
    __shared__ float qs[ATTN_HEADS_PER_BLOCK][ATTN_MAX_ROW];
    __shared__ float tile[ATTN_TILE_ROWS][ATTN_MAX_ROW];
    const int t = blockIdx.x, split = blockIdx.z;
    const int chunks = (group + ATTN_HEADS_PER_BLOCK - 1) / ATTN_HEADS_PER_BLOCK;
    const int kvh = blockIdx.y / chunks, first = (blockIdx.y % chunks) * ATTN_HEADS_PER_BLOCK;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int heads = kv_heads * group;
    const bool valid = first + warp < group;
    const int h = kvh * group + first + warp;
    const int seq = token_seq[t], n = ctx_lens[t];
    const int start = split * split_len;
    const int end = min(n, start + split_len);
    const int* table = block_tables + (long)seq * max_blocks;
    // The tile row: the key, then the value where it is not inside the key.
    const int k_off = key_offset + kvh * kv_stride, v_off = value_offset + kvh * kv_stride;
    const bool value_in_key = v_off >= k_off && v_off + value_len <= k_off + key_len;
    const int tile_v = value_in_key ? v_off - k_off : key_len;
    const int tile_w = value_in_key ? key_len : key_len + value_len;

    for (int i = threadIdx.x; i < ATTN_HEADS_PER_BLOCK * key_len; i += blockDim.x) {
        const int hh = first + i / key_len;
        qs[i / key_len][i % key_len] =
            hh < group ? q[((long)t * heads + kvh * group + hh) * key_len + i % key_len] : 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    // Each lane owns value columns lane + 32 j. The loops over j run to the constant bound
    // (unrolled, so acc stays in registers) and skip columns past the value.
    float acc[ATTN_MAX_VALUE_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATTN_MAX_VALUE_PER_LANE; ++j) acc[j] = 0.0f;

    for (int r0 = start; r0 < end; r0 += ATTN_TILE_ROWS) {
        const int rows = min(ATTN_TILE_ROWS, end - r0);
        __syncthreads();  // the last tile's readers are done (and, first time, q is loaded)
        for (int i = threadIdx.x; i < rows * tile_w; i += blockDim.x) {
            const int p = r0 + i / tile_w, c = i % tile_w;
            const float* row = cache + (long)table[p / block_tokens] * block_stride + layer_offset +
                               (long)(p % block_tokens) * row_w;
            tile[i / tile_w][c] = c < key_len ? row[k_off + c] : row[v_off + c - key_len];
        }
        __syncthreads();
        float s[ATTN_TILE_ROWS];
        float tile_max = NEG_INF;
#pragma unroll
        for (int i = 0; i < ATTN_TILE_ROWS; ++i) {
            float d = 0.0f;
            if (i < rows)
                for (int c = lane; c < key_len; c += 32) d += qs[warp][c] * tile[i][c];
            d = warp_sum(d);
            s[i] = i < rows ? d * scale : NEG_INF;
            tile_max = fmaxf(tile_max, s[i]);
        }
        const float m_new = fmaxf(m, tile_max);
        const float corr = expf(m - m_new);  // m = -inf the first time: 0
        l *= corr;
#pragma unroll
        for (int j = 0; j < ATTN_MAX_VALUE_PER_LANE; ++j) acc[j] *= corr;
        for (int i = 0; i < rows; ++i) {
            const float p = expf(s[i] - m_new);
            l += p;
#pragma unroll
            for (int j = 0; j < ATTN_MAX_VALUE_PER_LANE; ++j)
                if (lane + 32 * j < value_len) acc[j] += p * tile[i][tile_v + lane + 32 * j];
        }
        m = m_new;
    }
    if (valid) {
        const long o = ((long)t * heads + h) * splits + split;
#pragma unroll
        for (int j = 0; j < ATTN_MAX_VALUE_PER_LANE; ++j)
            if (lane + 32 * j < value_len)
                part_out[o * value_len + lane + 32 * j] = l > 0.0f ? acc[j] / l : 0.0f;
        if (lane == 0) part_lse[o] = l > 0.0f ? m + logf(l) : NEG_INF;
    }
}

// out[t][h] = the splits' latent sums weighted by exp(lse - max lse), one block per (token, head).
extern "C" __global__ void attention_combine(const float* __restrict__ part_out,
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
