"""bfloat16 optimizer state (state_dtype="bfloat16") as the native engine stores it.

The definition is native/src/bf16-inl.h's (docs/engine.md, "bfloat16 state"),
written again from the maths: a stored element of slot k of parameter p at
step t is

    stored = (bits(float32(x)) + r) >> 16,   r = (K (lo32(i) + hi32(key)) mod 2^32) >> 16
    key    = sm(sm(sm(sm(seed) ^ p) ^ t) ^ (k + 256 (i >> 32))),  K = 0x9E3779B1

with sm SplitMix64's step: x rounds up to the next bfloat16 with probability
(bits mod 2^16) / 2^16, so E[stored] = x.
A slot's first fill and an imported checkpoint round to nearest even instead.
One-element slots (eta, mu, mu_product, Madam's bound) stay float32.
"""

import numpy as np
import torch

M64 = (1 << 64) - 1

# Each optimizer's slots in the engine's order (k above); one-element ones are not rounded.
SLOTS = {
    "sgd": ["momentum_buffer"],
    "adam": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    "adamw": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    "adagrad": ["sum"],
    "rmsprop": ["square_avg", "grad_avg", "momentum_buffer"],
    "adamax": ["exp_avg", "exp_inf"],
    "nadam": ["exp_avg", "exp_avg_sq"],
    "radam": ["exp_avg", "exp_avg_sq"],
    "adadelta": ["square_avg", "acc_delta"],
    "lion": ["exp_avg"],
    "rprop": ["prev", "step_size"],
    "asgd": [None, None, "ax"],
    "lamb": ["exp_avg", "exp_avg_sq"],
    "lars": ["momentum_buffer"],
}


def split_mix(z):
    """SplitMix64's step (a bijection of 64-bit words)."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def slot_offset(seed, param, t, slot):
    """hi32 of the key of slot `slot` of parameter `param` at step t (elements below 2^32)."""
    key = split_mix(split_mix(split_mix(seed) ^ param) ^ t)
    return split_mix(key ^ slot) >> 32


K = 0x9E3779B1


def round_stochastic(x, seed, param, t, slot):
    """The tensor x (any float dtype) as the engine stores slot `slot`: float32 values that are bfloat16."""
    bits = x.detach().to(torch.float32).reshape(-1).numpy().view(np.uint32).astype(np.uint64)
    i = np.arange(bits.size, dtype=np.uint64)
    r = ((((i + slot_offset(seed, param, t, slot)) & 0xFFFFFFFF) * K) & 0xFFFFFFFF) >> 16
    out = ((((bits + r) >> 16) << 16) & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    return torch.from_numpy(out.copy()).reshape(x.shape).to(x.dtype)


def round_nearest(x):
    """x as float32, then bfloat16 to nearest even (as a slot's first fill or an import narrows)."""
    return x.to(torch.bfloat16).to(x.dtype)
