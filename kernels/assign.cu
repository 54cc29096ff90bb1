// assign_chunks and edge_bytes: the load balance of a scheduler tick (docs/design.md, section 14, "The
// chunk scheduler").
//
// Each edge has an integer share, weight[e]: the request slots it gets of this priority class when the
// class's requests are spread so that every edge finishes as early as it can (earliest-finish-time water
// filling, computed per edge on the host). A chunk takes its primary edge among its usable candidates in
// proportion to their shares, by a low-discrepancy point: x = seq * 0x9e3779b9 mod 2^32 (the golden ratio
// in 32-bit fixed point), target = x * total >> 32, and the first candidate whose running sum of shares
// passes the target. Consecutive requests thus fall on the edges in proportion to their shares, evenly
// interleaved, and a request keeps its edge while the shares do not change. All of it is integer
// arithmetic. A chunk none of whose candidates has a share takes its fastest (choice[0]). The rest of
// choice, without the primary, are its backups, in order: order[i] = primary, backups..., -1 padding.
//
// edge_bytes sums each edge's primary bytes; integer atomics add in any order to the same total.
#define PORTAL_GOLDEN 0x9e3779b9u

extern "C" __global__ void assign_chunks(const int* __restrict__ cand, const unsigned char* __restrict__ usable,
                                         const unsigned int* __restrict__ weight, const unsigned int* __restrict__ seq,
                                         const int* __restrict__ choice, int n, int r, int k1,
                                         int* __restrict__ order) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        unsigned long long total = 0;
        for (int j = 0; j < r; ++j) {
            const int e = cand[i * r + j];
            if (e >= 0 && usable[e]) total += weight[e];
        }
        int primary = choice[i * k1];
        if (total > 0) {
            const unsigned long long x = (unsigned int)(seq[i] * PORTAL_GOLDEN);
            const unsigned long long target = (x * total) >> 32;
            unsigned long long sum = 0;
            for (int j = 0; j < r; ++j) {
                const int e = cand[i * r + j];
                if (e < 0 || !usable[e]) continue;
                sum += weight[e];
                if (target < sum) {
                    primary = e;
                    break;
                }
            }
        }
        order[i * k1] = primary;
        int t = 1;
        for (int c = 0; c < k1; ++c) {
            const int e = choice[i * k1 + c];
            if (e != primary && t < k1) order[i * k1 + t++] = e;
        }
        for (; t < k1; ++t) order[i * k1 + t] = -1;
    }
}

extern "C" __global__ void edge_bytes(const int* __restrict__ order, const unsigned int* __restrict__ size, int n,
                                      int k1, unsigned long long* __restrict__ bytes) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const int e = order[i * k1];
        if (e >= 0) atomicAdd(&bytes[e], (unsigned long long)size[i]);
    }
}
