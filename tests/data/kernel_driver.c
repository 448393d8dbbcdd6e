/* Runs the compiled kernel's conv_neuron on cases read from a file and writes the results: a bridge for
   running a cross-compiled kernel (aarch64, armhf) under qemu-user, where no Python or numpy of the target
   exists (tests/test_kernels_build.py writes the cases and compares the results).
   Case file: int32 n_cases, then per case int32 L, const, h, w, cs, k, st, co, nq, lanes16, leak, hard, uwd,
   threads, cy0, cy1, lut_bytes, then x (uint8, Lx*h*w*cs with Lx = const ? 1 : L), lut, bias (int32 co),
   theta (int32 co), v (int32 ho*wo*co). Output: per case v after, spikes (uint8 L*ho*wo*co), counts (int64 L). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int conv_neuron(const uint8_t *x, int L, long x_step, int h, int w, int cs, int k, int st, const void *lut, int co,
                int nq, int lanes16, const int32_t *bias, int32_t *v, const int32_t *theta, int leak, int hard,
                int uwd, uint8_t *spk, int threads, int cy0, int cy1, int64_t *counts);

static void *readn(FILE *f, size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, f) != n) { fprintf(stderr, "short case file\n"); exit(3); }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: driver CASES OUT\n"); return 2; }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) { perror("open"); return 2; }
    int32_t n, *hd;
    if (fread(&n, 4, 1, in) != 1) return 3;
    for (int c = 0; c < n; c++) {
        hd = readn(in, 17 * 4);
        int L = hd[0], cst = hd[1], h = hd[2], w = hd[3], cs = hd[4], k = hd[5], st = hd[6], co = hd[7];
        int ho = (h + st - 1) / st, wo = (w + st - 1) / st, Lx = cst ? 1 : L;
        uint8_t *x = readn(in, (size_t)Lx * h * w * cs);
        void *lut = readn(in, (size_t)hd[16]);
        int32_t *bias = readn(in, 4 * (size_t)co), *theta = readn(in, 4 * (size_t)co);
        int32_t *v = readn(in, 4 * (size_t)ho * wo * co);
        uint8_t *spk = malloc((size_t)L * ho * wo * co);
        int64_t *counts = malloc(8 * (size_t)L);
        int rc = conv_neuron(x, L, cst ? 0 : (long)h * w * cs, h, w, cs, k, st, lut, co, hd[8], hd[9], bias, v,
                             theta, hd[10], hd[11], hd[12], spk, hd[13], hd[14], hd[15], counts);
        if (rc) { fprintf(stderr, "conv_neuron failed (%d)\n", rc); return 4; }
        fwrite(v, 4, (size_t)ho * wo * co, out);
        fwrite(spk, 1, (size_t)L * ho * wo * co, out);
        fwrite(counts, 8, L, out);
        free(hd); free(x); free(lut); free(bias); free(theta); free(v); free(spk); free(counts);
    }
    fclose(out);
    return 0;
}
