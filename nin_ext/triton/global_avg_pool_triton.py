"""Triton kernel of global_avg_pool: the mean over the spatial positions of (N, C, H, W), any strides.

Each program owns BLOCK_C channels of one image and adds the positions up one after the other, so
the sum's order does not depend on the tile configuration: the same bits on every run. nin_block_gap
reuses it to reduce its kernel's partial sums (see nin_block_triton.py).
"""
import torch
import triton
import triton.language as tl

from .config import autotune_configs, triton_dtype


@triton.jit
def spatial_mean_kernel(x_ptr, out_ptr, C, H, W, count, sxn, sxc, sxh, sxw, son, soc,
                        ACC_DTYPE: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels < C
    channel_ptr = x_ptr + n.to(tl.int64) * sxn + channels * sxc
    acc = tl.zeros([BLOCK_C], dtype=ACC_DTYPE)
    for i in range(0, H * W):
        acc += tl.load(channel_ptr + (i // W) * sxh + (i % W) * sxw, mask=channel_mask, other=0.0).to(ACC_DTYPE)
    mean = acc / count
    tl.store(out_ptr + n * son + channels * soc, mean.to(out_ptr.dtype.element_ty), mask=channel_mask)


spatial_mean_tuned = triton.autotune(configs=autotune_configs("global_avg_pool"), key=["C", "H", "W"])(
    spatial_mean_kernel)


def launch_spatial_mean(x, out, acc_dtype, count=None):
    """out (N, C) = the sum of x (N, C, H, W) over H and W, accumulated in acc_dtype (a torch dtype),
    divided by `count` (default H * W)."""
    n, c, h, w = x.shape

    def grid(meta):
        return (n, triton.cdiv(c, meta["BLOCK_C"]))

    torch.library.wrap_triton(spatial_mean_tuned)[grid](
        x, out, c, h, w, h * w if count is None else count, *x.stride(), *out.stride(), ACC_DTYPE=triton_dtype(acc_dtype))
