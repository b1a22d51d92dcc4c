"""Launch settings shared by the Triton kernels: tile configurations and dot precision.

On a GPU each kernel is autotuned per shape over a small list of tile configurations. Triton's
interpreter (TRITON_INTERPRET=1, which runs CPU tensors) gets one small configuration: timing
configurations there would only measure numpy.
"""
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read by @triton.jit when our kernels are defined

# (BLOCK_P, BLOCK_K, BLOCK_C1, num_warps, num_stages)
_NIN_BLOCK_GPU_TILES = [
    (32, 32, 32, 4, 2),
    (32, 32, 64, 8, 2),
    (64, 32, 64, 4, 2),
    (64, 64, 64, 8, 3),
    (128, 32, 32, 8, 2),
    (128, 64, 64, 8, 3),
]
_NIN_BLOCK_INTERPRETER_TILE = (64, 32, 16, 1, 1)  # few programs: the interpreter's cost is per op

# (BLOCK_C, BLOCK_HW, num_warps)
_GLOBAL_AVG_POOL_GPU_TILES = [(32, 64, 4), (64, 128, 4), (128, 32, 4), (16, 256, 8)]
_GLOBAL_AVG_POOL_INTERPRETER_TILE = (16, 16, 1)

# The register tiles of a nin_block program hold BLOCK_P x (BLOCK_CC + BLOCK_C2) accumulators; more
# than this many per thread would spill.
_MAX_ACCUMULATORS_PER_THREAD = 128


def autotune_configs(op):
    """The triton.Config list of a kernel ("nin_block" or "global_avg_pool")."""
    if op == "nin_block":
        tiles = [_NIN_BLOCK_INTERPRETER_TILE] if INTERPRETED else _NIN_BLOCK_GPU_TILES
        return [triton.Config(dict(BLOCK_P=p, BLOCK_K=k, BLOCK_C1=c1), num_warps=warps, num_stages=stages)
                for p, k, c1, warps, stages in tiles]
    tiles = [_GLOBAL_AVG_POOL_INTERPRETER_TILE] if INTERPRETED else _GLOBAL_AVG_POOL_GPU_TILES
    return [triton.Config(dict(BLOCK_C=c, BLOCK_HW=hw), num_warps=warps) for c, hw, warps in tiles]


def prune_nin_block_configs(configs, named_args, **kwargs):
    """Drops the configurations whose register tiles would not fit (keeps the smallest if none does)."""
    def accumulators_per_thread(config):
        return config.kwargs["BLOCK_P"] * (kwargs["BLOCK_CC"] + kwargs["BLOCK_C2"]) / (32 * config.num_warps)

    fitting = [c for c in configs if accumulators_per_thread(c) <= _MAX_ACCUMULATORS_PER_THREAD]
    return fitting or [min(configs, key=accumulators_per_thread)]


def dot_input_precision(x):
    """tl.dot's input_precision for x's dtype, as PyTorch's reference computes it: its convolutions
    go through cuDNN, which uses TF32 for fp32 when torch.backends.cudnn.allow_tf32 is set (on CPU,
    and in the interpreter, everything is IEEE). fp16/bf16/fp64 ignore the setting."""
    if x.dtype == torch.float32 and x.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def accumulator_dtype(dtype):
    """The dtype the kernels accumulate x's dtype in: fp32 for fp16/bf16/fp32, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_dtype(dtype):
    """tl dtype of an accumulator_dtype (a constexpr of the kernels)."""
    return tl.float64 if dtype == torch.float64 else tl.float32
