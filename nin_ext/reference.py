"""The plain PyTorch NiN of the seed notebook: the ground truth for tests and benchmarks.

`nin_block` and `nin_net` build exactly the notebook's modules. The functional forms below them
(`nin_block_activations` and the `*_reference` functions) compute the
same thing from raw tensors; they serve as the `reference` backend and as the recomputation in the
fused ops' backward.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def nin_block(in_channels, out_channels, kernel_size, strides, padding):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding),
                         nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, kernel_size=1),
                         nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, kernel_size=1),
                         nn.ReLU())


def nin_net(in_channels=1, num_classes=10, dropout=0.5):
    """The notebook's `net` (there with in_channels=1, num_classes=10, dropout=0.5)."""
    return nn.Sequential(nin_block(in_channels=in_channels, out_channels=96, kernel_size=11, strides=4, padding=0),
                         nn.MaxPool2d(kernel_size=3, stride=2),
                         nin_block(in_channels=96, out_channels=256, kernel_size=5, strides=1, padding=2),
                         nn.MaxPool2d(kernel_size=3, stride=2),
                         nin_block(in_channels=256, out_channels=384, kernel_size=3, strides=1, padding=1),
                         nn.MaxPool2d(kernel_size=3, stride=2),
                         nn.Dropout(dropout),
                         nin_block(in_channels=384, out_channels=num_classes, kernel_size=3, strides=1, padding=1),
                         nn.AdaptiveAvgPool2d(output_size=(1, 1)),
                         nn.Flatten())


def nin_block_activations(x, w, b, w1, b1, w2, b2, stride, padding):
    """The block's three post-ReLU activations (conv, first 1x1, second 1x1), for a 4-d x."""
    h0 = F.relu(F.conv2d(x, w, b, stride, padding))
    h1 = F.relu(F.conv2d(h0, w1, b1))
    return h0, h1, F.relu(F.conv2d(h1, w2, b2))


def nin_block_reference(x, w, b, w1, b1, w2, b2, stride, padding):
    return nin_block_activations(x, w, b, w1, b1, w2, b2, stride, padding)[2]


def global_avg_pool_reference(x):
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def nin_block_gap_reference(x, w, b, w1, b1, w2, b2, stride, padding):
    return global_avg_pool_reference(nin_block_reference(x, w, b, w1, b1, w2, b2, stride, padding))


def max_pool2d_reference(x, kernel_size, stride, padding, ceil_mode):
    return F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
