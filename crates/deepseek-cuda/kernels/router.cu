// The DeepSeekMoE router, after the router matmul: scores, group-limited choice, top-k, weights.
// The same rule as the CPU's `deepseek_model::router::Router::route_one`:
// - scoring 0 = softmax, 1 = sigmoid;
// - method 0 = greedy, 1 = group-limited greedy (group score = best expert), 2 = noaux_tc
//   (V3: `bias` added to choose only, group score = sum of the group's top two, weights unbiased);
// - weights normalised (sum + 1e-20) when `normalize`; times `scaling` when `scale`.
// Ties go to the lower expert index. One thread per token: a token's work is a few thousand
// comparisons, and decode batches are small.
#define ROUTER_MAX_EXPERTS 256
#define ROUTER_MAX_GROUPS 64

__device__ __forceinline__ int router_argmax(const float* v, int n) {
    int best = 0;
    for (int i = 1; i < n; ++i)
        if (v[i] > v[best]) best = i;
    return best;
}

extern "C" __global__ void route_topk(const float* __restrict__ logits, const float* __restrict__ bias,
                                      int* __restrict__ ids, float* __restrict__ weights, int tokens,
                                      int n_experts, int top_k, int n_group, int topk_group,
                                      int scoring, int method, int normalize, int scale, float scaling) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens) return;
    const float* l = logits + (long)t * n_experts;
    float score[ROUTER_MAX_EXPERTS], choice[ROUTER_MAX_EXPERTS];
    if (scoring == 0) {
        float m = l[0];
        for (int e = 1; e < n_experts; ++e) m = fmaxf(m, l[e]);
        float s = 0.0f;
        for (int e = 0; e < n_experts; ++e) { score[e] = expf(l[e] - m); s += score[e]; }
        for (int e = 0; e < n_experts; ++e) score[e] /= s;
    } else {
        for (int e = 0; e < n_experts; ++e) score[e] = 1.0f / (1.0f + expf(-l[e]));
    }
    for (int e = 0; e < n_experts; ++e)
        choice[e] = (method == 2 && bias) ? score[e] + bias[e] : score[e];
    if (method != 0 && n_group > 1) {
        const int gsize = n_experts / n_group;
        float gscore[ROUTER_MAX_GROUPS];
        for (int g = 0; g < n_group; ++g) {
            const float* c = choice + g * gsize;
            if (method == 2) {
                const int a = router_argmax(c, gsize);
                float second = NEG_INF;
                for (int i = 0; i < gsize; ++i)
                    if (i != a && c[i] > second) second = c[i];
                gscore[g] = gsize > 1 ? c[a] + second : c[a];
            } else {
                gscore[g] = c[router_argmax(c, gsize)];
            }
        }
        int keep[ROUTER_MAX_GROUPS];
        for (int g = 0; g < n_group; ++g) keep[g] = 0;
        for (int k = 0; k < topk_group; ++k) {
            int best = -1;
            for (int g = 0; g < n_group; ++g)
                if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
            keep[best] = 1;
        }
        for (int g = 0; g < n_group; ++g)
            if (!keep[g])
                for (int i = 0; i < gsize; ++i) choice[g * gsize + i] = NEG_INF;
    }
    bool taken[ROUTER_MAX_EXPERTS];
    for (int e = 0; e < n_experts; ++e) taken[e] = false;
    float sum = 0.0f;
    for (int k = 0; k < top_k; ++k) {
        int best = -1;
        for (int e = 0; e < n_experts; ++e)
            if (!taken[e] && (best < 0 || choice[e] > choice[best])) best = e;
        taken[best] = true;
        ids[t * top_k + k] = best;
        weights[t * top_k + k] = score[best];
        sum += score[best];
    }
    for (int k = 0; k < top_k; ++k) {
        float w = weights[t * top_k + k];
        if (normalize) w /= sum + 1e-20f;
        if (scale) w *= scaling;
        weights[t * top_k + k] = w;
    }
}
