"""torch.library.opcheck on the registered torch.ops.nin_ext operators."""
import pytest
import torch

from conftest import HAS_CUDA, NO_CUDA_REASON, require_extension

OP_NAMES = ["nin_block", "nin_block_gap", "nin_block_with_hidden", "global_avg_pool"]


def _op(name):
    require_extension()
    ns = torch.ops.nin_ext
    assert hasattr(ns, name), f"torch.ops.nin_ext.{name} is not registered"
    return getattr(ns, name).default


def _block_samples(device):
    def mk(*s, rg=False, dtype=torch.float32):
        return torch.randn(*s, device=device, dtype=dtype).requires_grad_(rg)

    samples = []
    # plain
    samples.append(((mk(2, 3, 7, 6), mk(4, 3, 3, 3), mk(4), mk(4, 4, 1, 1), mk(4), mk(5, 4, 1, 1), mk(5)),
                    [1, 1], [1, 1]))
    # requires_grad everywhere, non-square kernel / stride / padding
    samples.append(((mk(1, 2, 9, 8, rg=True), mk(3, 2, 3, 2, rg=True), mk(3, rg=True), mk(3, 3, 1, 1, rg=True),
                     mk(3, rg=True), mk(2, 3, 1, 1, rg=True), mk(2, rg=True)), [2, 1], [1, 0]))
    # channels_last input, requires_grad, biases None
    x = torch.randn(2, 4, 6, 5, device=device).to(memory_format=torch.channels_last).requires_grad_(True)
    samples.append(((x, mk(3, 4, 1, 3, rg=True), None, mk(6, 3, 1, 1, rg=True), None,
                     mk(2, 6, 1, 1, rg=True), None), [1, 2], [0, 1]))
    # float64, only the weights require grad
    d = torch.float64
    samples.append(((mk(1, 1, 5, 5, dtype=d), mk(2, 1, 2, 2, rg=True, dtype=d), mk(2, dtype=d),
                     mk(2, 2, 1, 1, rg=True, dtype=d), mk(2, dtype=d), mk(3, 2, 1, 1, dtype=d),
                     mk(3, rg=True, dtype=d)), [1, 1], [0, 0]))
    # empty batch
    samples.append(((mk(0, 3, 5, 5), mk(4, 3, 3, 3), mk(4), mk(4, 4, 1, 1), mk(4), mk(4, 4, 1, 1), mk(4)),
                    [1, 1], [1, 1]))
    return [(list(t) + [s, p]) for t, s, p in samples]


def _gap_samples(device):
    cl = torch.randn(2, 5, 4, 3, device=device).to(memory_format=torch.channels_last)
    return [
        [torch.randn(2, 3, 4, 5, device=device)],
        [torch.randn(1, 7, 3, 3, device=device, requires_grad=True)],
        [cl.requires_grad_(True)],
        [torch.randn(3, 2, 1, 6, device=device, dtype=torch.float64, requires_grad=True)],
        [torch.randn(0, 4, 2, 2, device=device)],
    ]


def _devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON))]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", ["nin_block", "nin_block_gap", "nin_block_with_hidden"])
@pytest.mark.parametrize("idx", range(5))
def test_opcheck_block_ops(name, idx, device):
    op = _op(name)
    if device == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"):
        pytest.skip(f"{name} has no CUDA kernel (the CPU backend's training forward)")
    args = _block_samples(device)[idx]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("idx", range(5))
def test_opcheck_global_avg_pool(idx, device):
    op = _op("global_avg_pool")
    torch.library.opcheck(op, _gap_samples(device)[idx])


@pytest.mark.parametrize("name", OP_NAMES)
def test_schema(name):
    op = _op(name)
    schema = str(op._schema)
    if name == "global_avg_pool":
        assert schema == "nin_ext::global_avg_pool(Tensor x) -> Tensor", schema
    else:
        returns = "(Tensor, Tensor, Tensor)" if name == "nin_block_with_hidden" else "Tensor"
        expected = (f"nin_ext::{name}(Tensor x, Tensor w, Tensor? b, Tensor w1, Tensor? b1, Tensor w2, "
                    f"Tensor? b2, SymInt[2] stride, SymInt[2] padding) -> {returns}")
        alt = expected.replace("SymInt[2]", "int[2]")
        assert schema in (expected, alt), schema
