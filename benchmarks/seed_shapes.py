"""The seed NiN's four blocks as the per-op benchmarks use them, and block 1 of an RGB NiN ("1rgb":
three input channels, which the CPU backend runs in its polyphase form): (in, out, kernel, stride,
padding, input height = width) for a 224x224 image."""
SEED_BLOCKS = {
    "1": (1, 96, 11, 4, 0, 224),
    "2": (96, 256, 5, 1, 2, 26),
    "3": (256, 384, 3, 1, 1, 12),
    "4": (384, 10, 3, 1, 1, 5),
    "1rgb": (3, 96, 11, 4, 0, 224),
}


def seed_block(index, batch, dtype, device):
    """(block module of the reference, its input) for block `index` ("1" to "4", "1rgb"), in `dtype` on
    `device`."""
    import torch

    import nin_ext

    c_in, c_out, k, s, p, hw = SEED_BLOCKS[index]
    block = nin_ext.reference.nin_block(c_in, c_out, k, s, p).to(device=device, dtype=dtype).eval()
    return block, torch.randn(batch, c_in, hw, hw, device=device, dtype=dtype)


def block_op_args(block):
    """The weights, stride and padding of a reference block in the order of the nin_block ops."""
    conv, conv1, conv2 = block[0], block[2], block[4]
    return conv.weight, conv.bias, conv1.weight, conv1.bias, conv2.weight, conv2.bias, conv.stride, conv.padding
