"""Blocks 2, 3 and 1 of the NiN at batch 256 in TF32, once each inside a CUDA profiler range, in that
order, for Nsight Compute: `ncu --profile-from-start off --kernel-name regex:nin_block_kernel --set full
-c 1 python benchmarks/ncu_blocks.py` profiles block 2's kernel (`-c 2` adds block 3's, `-c 3` block
1's; without the name, the weight packing's kernel that runs before each block counts too)."""
import torch

import nin_ext

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.manual_seed(0)
block2 = nin_ext.NiNBlock(96, 256, 5, 1, 2).cuda()
block3 = nin_ext.NiNBlock(256, 384, 3, 1, 1).cuda()
block1 = nin_ext.NiNBlock(1, 96, 11, 4, 0).cuda()
x2 = torch.randn(256, 96, 26, 26, device="cuda")
x3 = torch.randn(256, 256, 12, 12, device="cuda")
x1 = torch.randn(256, 1, 224, 224, device="cuda")
with torch.no_grad():
    for _ in range(2):  # compile-free warm-up: plans, caches, lazy module loading
        block2(x2)
        block3(x3)
        block1(x1)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    block2(x2)
    block3(x3)
    block1(x1)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
