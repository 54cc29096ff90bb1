// Entry points for running kernels/*.cu on the CPU (see cpu.h): one C function per kernel that takes the
// launch shape first. Built by tests/unit/test_kernels.py with each kernel file as its own translation unit.
#include "cpu.h"

extern "C" {
void rank_chunks(const int*, const unsigned int*, const float*, const float*, const unsigned char*, int, int, int,
                 int*, float*);
void assign_chunks(const int*, const unsigned char*, const unsigned int*, const unsigned int*, const int*, int, int,
                   int, int*);
void edge_bytes(const int*, const unsigned int*, int, int, unsigned long long*);

void launch_rank_chunks(unsigned int grid, unsigned int block, const int* cand, const unsigned int* size,
                        const float* ready, const float* inv_rate, const unsigned char* usable, int n, int r, int k1,
                        int* choice, float* best) {
    launch(dim3(grid), dim3(block), rank_chunks, cand, size, ready, inv_rate, usable, n, r, k1, choice, best);
}

void launch_assign_chunks(unsigned int grid, unsigned int block, const int* cand, const unsigned char* usable,
                          const unsigned int* weight, const unsigned int* seq, const int* choice, int n, int r,
                          int k1, int* order) {
    launch(dim3(grid), dim3(block), assign_chunks, cand, usable, weight, seq, choice, n, r, k1, order);
}

void launch_edge_bytes(unsigned int grid, unsigned int block, const int* order, const unsigned int* size, int n,
                       int k1, unsigned long long* bytes) {
    launch(dim3(grid), dim3(block), edge_bytes, order, size, n, k1, bytes);
}
}
