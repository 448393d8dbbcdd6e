"""The float 'same' convolution of the profiler's ANN twins and test models (exact GEMM per tap, no im2col).

The SNN itself always runs on :mod:`edgespike.runtime`; this module only serves float (rate-domain) networks.
"""

from __future__ import annotations

import numpy as np


def conv_same(x: np.ndarray, w: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``same`` 2-D convolution, stride 1, zero padding: ``x`` [H, W, C], ``w`` [O, C, k, k] -> [H, W, O].

    One GEMM per tap on contiguous row slices of the flattened padded map (no im2col copy): output row ``y``,
    column ``x`` of tap ``(i, j)`` reads flat index ``(y + i) * Wp + x + j``; the ``2p`` extra columns per row are
    computed and dropped.
    """
    h, wd, c = x.shape
    k = w.shape[2]
    p = k // 2
    wp = wd + 2 * p
    xp = np.zeros((h + 2 * p + 1, wp, c), dtype)  # one spare row keeps the last tap's slice in bounds
    xp[p:p + h, p:p + wd] = x
    flat = xp.reshape(-1, c)
    n = h * wp
    out = np.zeros((n, w.shape[0]), dtype)
    wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0).astype(dtype))  # [k, k, C, O]
    for i in range(k):
        for j in range(k):
            off = i * wp + j
            out += flat[off:off + n] @ wt[i, j]
    return out.reshape(h, wp, -1)[:, :wd]
