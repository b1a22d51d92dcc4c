"""Triton kernel of nin_block and nin_block_gap: the whole block on a tile of output pixels.

Shapes as in csrc/nin_block_checks.h: x (N, C0, H, W) -> conv KHxKW (CC channels) -> 1x1 (C1) -> 1x1 (C2).
One program computes BLOCK_P output pixels of one image times BLOCK_C2 output channels:

    h0 = relu(im2col(x) @ w^T + b)      implicit GEMM over K = C0*KH*KW in chunks of BLOCK_K
    for each chunk of BLOCK_C1 channels of the first 1x1 layer:
        h1 = relu(h0 @ w1[chunk]^T + b1[chunk])
        acc2 += h1 @ w2[:, chunk]^T
    out = relu(acc2 + b2)

Neither h0 nor h1 leaves the program (registers / shared memory). h0 is computed once and kept when
CC fits one tile of BLOCK_CC <= H0_RESIDENT_MAX_CHANNELS channels; a wider conv is streamed in
chunks of BLOCK_CC and recomputed for every chunk of C1 (compute instead of a scratch buffer that would
send h0 through memory). More than BLOCK_C2 <= MAX_C2_TILE output channels are split over a second
grid axis, each column recomputing h0 and h1 for its channels.

With HAS_GAP the program does not store its tile: it sums each group of GAP_GROUP consecutive pixels
of it into a partial-sum buffer (N, cdiv(OH*OW, GAP_GROUP), C2), which a fixed-order reduction turns
into the mean. Every entry is written by exactly one program and no atomics are used, so the bits are
the same on every run; the grouping does not depend on the autotuned BLOCK_P.
"""
import torch
import triton
import triton.language as tl

from .._nin_block_checks import conv_output_size
from .config import accumulator_dtype, autotune_configs, dot_input_precision, prune_nin_block_configs, triton_dtype

# Bounds of the register tiles, chosen so that h0 and the output accumulator of a tile stay on chip.
H0_RESIDENT_MAX_CHANNELS = 512
STREAMED_CC_CHUNK = 64
# Up to 512 output channels in one program: a split recomputes h0 and h1 per part (the seed's block 3,
# 384 channels, did 1.9x its work as two 256-channel parts); compiled for sm_90, the 32-pixel tiles
# that hold 512 of h0 and 512 outputs use the registers and shared memory of 256 outputs (184 against
# 168 registers, one program per SM either way, in fp32).
MAX_C2_TILE = 512
MIN_DOT_SIZE = 16   # tl.dot needs every dimension >= 16
GAP_GROUP = MIN_DOT_SIZE  # pixels per partial sum of nin_block_gap; divides every BLOCK_P


def _tile_channels(channels):
    return max(MIN_DOT_SIZE, triton.next_power_of_2(channels))


@triton.jit
def _bias_relu(acc, b_ptr, channels, channel_mask, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + channels, mask=channel_mask, other=0.0).to(acc.dtype)[None, :]
    return tl.maximum(acc, 0.0)


@triton.jit
def _conv_relu_tile(x_img_ptr, w_ptr, b_ptr, ih0, iw0, pixel_mask, channels, channel_mask,
                    C0, H, W, sxc, sxh, sxw, swo, swi, swh, sww,
                    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    """relu(conv + bias) of the tile's pixels for the given output channels: an implicit GEMM whose
    A operand is the im2col patch, gathered straight from x (padding = masked loads)."""
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC_DTYPE)
    k_total = C0 * KH * KW
    for k_start in range(0, k_total, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        k_mask = k < k_total
        ci = k // (KH * KW)
        kh = (k // KW) % KH
        kw = k % KW
        ih = ih0[:, None] + kh[None, :]
        iw = iw0[:, None] + kw[None, :]
        a_mask = pixel_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_img_ptr + ci[None, :] * sxc + ih * sxh + iw * sxw, mask=a_mask, other=0.0)
        w_tile = tl.load(w_ptr + channels[None, :] * swo + ci[:, None] * swi + kh[:, None] * swh + kw[:, None] * sww,
                         mask=k_mask[:, None] & channel_mask[None, :], other=0.0)
        acc = tl.dot(a, w_tile, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    return _bias_relu(acc, b_ptr, channels, channel_mask, HAS_BIAS)


@triton.jit
def _pointwise_dot(h, w_ptr, s_out, s_in, out_channels, out_mask, in_channels, in_mask, acc,
                   ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + h @ w[out_channels, in_channels]^T for a 1x1 convolution weight; h is rounded to the
    weight's dtype first, as the reference stores its activation in that dtype."""
    w_tile = tl.load(w_ptr + out_channels[None, :] * s_out + in_channels[:, None] * s_in,
                     mask=in_mask[:, None] & out_mask[None, :], other=0.0)
    return tl.dot(h.to(w_tile.dtype), w_tile, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)


@triton.jit
def nin_block_kernel(
        x_ptr, w_ptr, b_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
        C0, H, W, CC, C1, C2, OH, OW,
        sxn, sxc, sxh, sxw, swo, swi, swh, sww, sw1o, sw1i, sw2o, sw2i, son, soc, soh, sow,
        SH, SW, PH, PW,
        KH: tl.constexpr, KW: tl.constexpr, HAS_B: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
        HAS_GAP: tl.constexpr, H0_RESIDENT: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_CC: tl.constexpr, BLOCK_C2: tl.constexpr, GAP_GROUP: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C1: tl.constexpr):
    pid = tl.program_id(0)
    tiles_per_image = tl.cdiv(OH * OW, BLOCK_P)
    n = pid // tiles_per_image
    tile = pid % tiles_per_image
    pixels = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < OH * OW
    oh = pixels // OW
    ow = pixels % OW
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    x_img_ptr = x_ptr + n.to(tl.int64) * sxn
    c2 = tl.program_id(1) * BLOCK_C2 + tl.arange(0, BLOCK_C2)
    c2_mask = c2 < C2
    cc_in_chunk = tl.arange(0, BLOCK_CC)

    if H0_RESIDENT:
        h0 = _conv_relu_tile(x_img_ptr, w_ptr, b_ptr, ih0, iw0, pixel_mask, cc_in_chunk, cc_in_chunk < CC,
                             C0, H, W, sxc, sxh, sxw, swo, swi, swh, sww, KH, KW, HAS_B, ACC_DTYPE,
                             DOT_PRECISION, BLOCK_P, BLOCK_K, BLOCK_CC)
    acc2 = tl.zeros([BLOCK_P, BLOCK_C2], dtype=ACC_DTYPE)
    for c1_start in range(0, C1, BLOCK_C1):
        c1 = c1_start + tl.arange(0, BLOCK_C1)
        c1_mask = c1 < C1
        acc1 = tl.zeros([BLOCK_P, BLOCK_C1], dtype=ACC_DTYPE)
        if H0_RESIDENT:
            acc1 = _pointwise_dot(h0, w1_ptr, sw1o, sw1i, c1, c1_mask, cc_in_chunk, cc_in_chunk < CC, acc1,
                                  ACC_DTYPE, DOT_PRECISION)
        else:
            for cc_start in range(0, CC, BLOCK_CC):
                cc = cc_start + cc_in_chunk
                cc_mask = cc < CC
                h0_chunk = _conv_relu_tile(x_img_ptr, w_ptr, b_ptr, ih0, iw0, pixel_mask, cc, cc_mask,
                                           C0, H, W, sxc, sxh, sxw, swo, swi, swh, sww, KH, KW, HAS_B, ACC_DTYPE,
                                           DOT_PRECISION, BLOCK_P, BLOCK_K, BLOCK_CC)
                acc1 = _pointwise_dot(h0_chunk, w1_ptr, sw1o, sw1i, c1, c1_mask, cc, cc_mask, acc1, ACC_DTYPE,
                                      DOT_PRECISION)
        h1 = _bias_relu(acc1, b1_ptr, c1, c1_mask, HAS_B1)
        acc2 = _pointwise_dot(h1, w2_ptr, sw2o, sw2i, c2, c2_mask, c1, c1_mask, acc2, ACC_DTYPE, DOT_PRECISION)
    y = _bias_relu(acc2, b2_ptr, c2, c2_mask, HAS_B2)

    if HAS_GAP:
        # out is the contiguous (N, groups, C2) partial-sum buffer.
        groups_per_tile: tl.constexpr = BLOCK_P // GAP_GROUP
        y = tl.where(pixel_mask[:, None], y, 0.0)
        group_sums = tl.sum(tl.reshape(y, [groups_per_tile, GAP_GROUP, BLOCK_C2]), axis=1)
        groups = tile * groups_per_tile + tl.arange(0, groups_per_tile)
        groups_per_image = tl.cdiv(OH * OW, GAP_GROUP)
        offsets = (n.to(tl.int64) * groups_per_image + groups[:, None]) * C2 + c2[None, :]
        tl.store(out_ptr + offsets, group_sums, mask=(groups < groups_per_image)[:, None] & c2_mask[None, :])
    else:
        out_offsets = n.to(tl.int64) * son + c2[None, :] * soc + oh[:, None] * soh + ow[:, None] * sow
        tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty),
                 mask=pixel_mask[:, None] & c2_mask[None, :])


_KEY = ["C0", "CC", "C1", "C2", "OH", "OW", "KH", "KW"]
nin_block_tuned = triton.autotune(configs=autotune_configs("nin_block"), key=_KEY,
                                  prune_configs_by={"early_config_prune": prune_nin_block_configs})(nin_block_kernel)


def gap_groups(output_size):
    """The number of partial sums per image and channel of nin_block_gap's kernel."""
    return triton.cdiv(output_size[0] * output_size[1], GAP_GROUP)


def launch_nin_block(x, w, b, w1, b1, w2, b2, stride, padding, out):
    """Runs the block kernel on checked arguments. `out` is the (N, C2, OH, OW) output, or, for
    nin_block_gap, the contiguous (N, gap_groups, C2) buffer of partial sums (accumulator dtype)."""
    n, c0, h, w_in = x.shape
    cc, _, kh, kw = w.shape
    c1, c2 = w1.shape[0], w2.shape[0]
    oh, ow = conv_output_size(x, w, stride, padding)
    has_gap = out.dim() == 3
    b, b1, b2 = (None if bias is None else bias.contiguous() for bias in (b, b1, b2))  # the kernel reads them densely
    h0_resident = _tile_channels(cc) <= H0_RESIDENT_MAX_CHANNELS
    block_cc = _tile_channels(cc) if h0_resident else STREAMED_CC_CHUNK
    block_c2 = min(_tile_channels(c2), MAX_C2_TILE)

    def grid(meta):
        return (n * triton.cdiv(oh * ow, meta["BLOCK_P"]), triton.cdiv(c2, block_c2))

    torch.library.wrap_triton(nin_block_tuned)[grid](
        x, w, b, w1, b1, w2, b2, out,
        c0, h, w_in, cc, c1, c2, oh, ow,
        *x.stride(), *w.stride(), w1.stride(0), w1.stride(1), w2.stride(0), w2.stride(1),
        *((0, 0, 0, 0) if has_gap else out.stride()),
        stride[0], stride[1], padding[0], padding[1],
        KH=kh, KW=kw, HAS_B=b is not None, HAS_B1=b1 is not None, HAS_B2=b2 is not None,
        HAS_GAP=has_gap, H0_RESIDENT=h0_resident, ACC_DTYPE=triton_dtype(accumulator_dtype(x.dtype)),
        DOT_PRECISION=dot_input_precision(x), BLOCK_CC=block_cc, BLOCK_C2=block_c2, GAP_GROUP=GAP_GROUP)
