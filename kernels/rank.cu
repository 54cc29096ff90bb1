// rank_chunks: the cost matrix of a scheduler tick and each pending chunk's best edges (docs/design.md,
// section 14, "The chunk scheduler").
//
// For chunk i and each candidate edge e that holds it and may be used, the cost is the time a request sent
// now would be answered: ready[e] (the edge's round trip and queue, in seconds) plus size[i] * inv_rate[e].
// Each product and sum is rounded on its own (__fmul_rn, __fadd_rn: no fused multiply-add), as NumPy's
// float32 arithmetic does, so both give the same bits. Costs are non-negative, so their bit patterns order
// as the numbers do, and the key (cost bits << 32 | edge) breaks ties by the lower edge index. The k1
// smallest keys are kept in registers by an unrolled insertion and written out as edge indices (-1: none).
#ifndef PORTAL_MAX_CHOICES
#define PORTAL_MAX_CHOICES 4
#endif
#define PORTAL_NO_KEY 0xffffffffffffffffULL

extern "C" __global__ void rank_chunks(const int* __restrict__ cand, const unsigned int* __restrict__ size,
                                       const float* __restrict__ ready, const float* __restrict__ inv_rate,
                                       const unsigned char* __restrict__ usable, int n, int r, int k1,
                                       int* __restrict__ choice, float* __restrict__ best) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        unsigned long long key[PORTAL_MAX_CHOICES];
#pragma unroll
        for (int t = 0; t < PORTAL_MAX_CHOICES; ++t) key[t] = PORTAL_NO_KEY;
        const float bytes = (float)size[i];
        for (int j = 0; j < r; ++j) {
            const int e = cand[i * r + j];
            if (e < 0 || !usable[e]) continue;
            const float cost = __fadd_rn(ready[e], __fmul_rn(bytes, inv_rate[e]));
            unsigned long long k = ((unsigned long long)__float_as_uint(cost) << 32) | (unsigned int)e;
#pragma unroll
            for (int t = 0; t < PORTAL_MAX_CHOICES; ++t) {  // keep the smaller here, carry the larger on
                const unsigned long long here = key[t];
                key[t] = k < here ? k : here;
                k = k < here ? here : k;
            }
        }
#pragma unroll
        for (int t = 0; t < PORTAL_MAX_CHOICES; ++t) {
            if (t < k1) choice[i * k1 + t] = key[t] == PORTAL_NO_KEY ? -1 : (int)(key[t] & 0xffffffffULL);
        }
        best[i] = key[0] == PORTAL_NO_KEY ? __uint_as_float(0x7f800000u) : __uint_as_float((unsigned int)(key[0] >> 32));
    }
}
