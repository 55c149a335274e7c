"""8-bit block-quantised optimizer state (state_dtype="q8") as the native engine stores it.

The definition is docs/engine.md's ("8-bit state"; native/src/q8map.h),
written again from the maths: the dynamic (tree) quantisation map of
Dettmers et al. (2022). After an optional sign bit, E zero bits, an indicator
bit and F linear fraction bits: magnitude 10^-E (0.1 + 0.9 (f + 1) / 2^F).
Signed (exp_avg, momentum, ...): E = 0..6, F = 6 - E, both signs and zero twice;
unsigned (slots that are never negative): E = 0..7, F = 7 - E and zero once;
256 float32 values, sorted. A slot is quantised per block of 256 elements
(from element 0): absmax = max |v|, code = the nearest entry to v / absmax
(float32 quotient; ties: the lower index), stored absmax * map[code] (float32).
"""

import numpy as np
import torch

# Slots that are never negative: the unsigned map.
UNSIGNED = {"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "exp_inf", "acc_delta", "step_size"}
BLOCK = 256


def build_map(unsigned):
    """The 256 entries, sorted, as float32."""
    values = [0.0] if unsigned else [0.0, 0.0]
    e_max = 7 if unsigned else 6
    for e in range(e_max + 1):
        f_bits = e_max - e
        for f in range(2**f_bits):
            mag = (2**f_bits + 9 * (f + 1)) / (10 ** (e + 1) * 2**f_bits)  # one rounding, as the engine
            values.append(mag)
            if not unsigned:
                values.append(-mag)
    return np.array(sorted(values), dtype=np.float64).astype(np.float32)


MAPS = {False: build_map(False), True: build_map(True)}


def quantise(x, unsigned):
    """The tensor x (any float dtype) as the engine stores a q8 slot: its values after quantisation."""
    v = x.detach().to(torch.float32).reshape(-1).numpy()
    table = MAPS[unsigned]
    out = np.zeros_like(v)
    for b in range(0, v.size, BLOCK):
        block = v[b : b + BLOCK]
        absmax = np.float32(np.abs(block).max()) if block.size else np.float32(0)
        if absmax == 0:
            continue
        q = (block / absmax).astype(np.float32).astype(np.float64)
        code = np.abs(q[:, None] - table.astype(np.float64)[None, :]).argmin(axis=1)  # first minimum: the lower index
        out[b : b + BLOCK] = absmax * table[code]
    return torch.from_numpy(out).reshape(x.shape).to(x.dtype)
