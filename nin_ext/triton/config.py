"""Launch settings shared by the Triton kernels: tile configurations and dot precision.

On a GPU each kernel is autotuned per shape over a small list of tile configurations, unless
NIN_EXT_TRITON_AUTOTUNE=0, which runs one configuration that fits every layer (the test suite sets it:
timing every configuration for each of its random shapes would take minutes). Triton's interpreter
(TRITON_INTERPRET=1, which runs CPU tensors) gets one small configuration: timing configurations there
would only measure numpy.
"""
import functools
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read by @triton.jit when our kernels are defined
AUTOTUNED = os.environ.get("NIN_EXT_TRITON_AUTOTUNE", "1") != "0"

# (BLOCK_P, BLOCK_K, BLOCK_C1, num_warps, num_stages); the first two fit the widest resident h0 tile
# (512 channels) in fp32 within an H100's shared memory (96 and 164 KiB of its 227), and the first
# fits it in fp64 too (192 KiB): it is the one configuration run without autotuning.
_NIN_BLOCK_UNTUNED_TILE = (32, 16, 16, 8, 1)
_NIN_BLOCK_GPU_TILES = [
    _NIN_BLOCK_UNTUNED_TILE,
    (32, 32, 32, 8, 2),
    (32, 32, 64, 8, 2),
    (64, 32, 64, 4, 2),
    (64, 32, 32, 8, 2),  # 256-channel layers (the seed's block 2) at 64 pixels: half the conv weight reads of 32
    (64, 64, 64, 8, 3),
    (128, 32, 32, 8, 2),
    (128, 64, 64, 8, 3),
]
_NIN_BLOCK_INTERPRETER_TILE = (64, 32, 16, 1, 1)  # few programs: the interpreter's cost is per op

# (BLOCK_C, num_warps)
_GLOBAL_AVG_POOL_UNTUNED_TILE = (128, 4)
_GLOBAL_AVG_POOL_GPU_TILES = [(32, 1), (64, 2), _GLOBAL_AVG_POOL_UNTUNED_TILE, (256, 8)]
_GLOBAL_AVG_POOL_INTERPRETER_TILE = (16, 1)

# The register tiles of a nin_block program hold BLOCK_P x (BLOCK_CC + BLOCK_C2) accumulators; more
# than this many per thread would spill.
_MAX_ACCUMULATORS_PER_THREAD = 128


def autotune_configs(op):
    """The triton.Config list of a kernel ("nin_block" or "global_avg_pool")."""
    if op == "nin_block":
        tiles = ([_NIN_BLOCK_INTERPRETER_TILE] if INTERPRETED else
                 _NIN_BLOCK_GPU_TILES if AUTOTUNED else [_NIN_BLOCK_UNTUNED_TILE])
        return [triton.Config(dict(BLOCK_P=p, BLOCK_K=k, BLOCK_C1=c1), num_warps=warps, num_stages=stages)
                for p, k, c1, warps, stages in tiles]
    tiles = ([_GLOBAL_AVG_POOL_INTERPRETER_TILE] if INTERPRETED else
             _GLOBAL_AVG_POOL_GPU_TILES if AUTOTUNED else [_GLOBAL_AVG_POOL_UNTUNED_TILE])
    return [triton.Config(dict(BLOCK_C=c), num_warps=warps) for c, warps in tiles]


@functools.lru_cache(maxsize=None)
def max_shared_memory(device):
    """Shared memory per block, in bytes, of a CUDA device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def nin_block_shared_memory_bytes(p, k, c1, stages, block_cc, block_c2, h0_resident, element_size):
    """An estimate of a nin_block program's shared memory: the conv loop's pipelined operand tiles
    (stages x (P x K + K x CC)) and the 1x1 layers' operands (the w1 and w2 tiles, h0 and h1). The conv's
    tiles are dead by the 1x1 layers when h0 is resident, live beside them when it is streamed. Against
    triton 3.8's sm_90 compile it is exact or high for the 32-pixel tiles, and up to 40% low for wider
    tiles with 512 resident channels, which need far more than a GPU has either way."""
    conv = stages * (p * k + k * block_cc)
    pointwise = block_cc * c1 + c1 * block_c2 + p * block_cc + p * c1
    return element_size * (max(conv, pointwise) if h0_resident else conv + pointwise)


def prune_nin_block_configs(configs, named_args, **kwargs):
    """The configurations whose register tiles and (estimated) shared memory fit, plus the one with
    the least shared memory: the autotuner then tries at least two and skips any that does not fit
    (with a single configuration left it would launch it untried, and fail)."""
    x = named_args["x_ptr"]
    smem_limit = max_shared_memory(x.device)

    def accumulators_per_thread(config):
        return config.kwargs["BLOCK_P"] * (kwargs["BLOCK_CC"] + kwargs["BLOCK_C2"]) / (32 * config.num_warps)

    def shared_memory(config):
        return nin_block_shared_memory_bytes(config.kwargs["BLOCK_P"], config.kwargs["BLOCK_K"],
                                             config.kwargs["BLOCK_C1"], config.num_stages, kwargs["BLOCK_CC"],
                                             kwargs["BLOCK_C2"], kwargs["H0_RESIDENT"], x.element_size())

    fitting = [c for c in configs
               if accumulators_per_thread(c) <= _MAX_ACCUMULATORS_PER_THREAD and shared_memory(c) <= smem_limit]
    smallest = min(configs, key=lambda c: (shared_memory(c), accumulators_per_thread(c)))
    return fitting if smallest in fitting else fitting + [smallest]


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
