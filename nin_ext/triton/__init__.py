"""The `triton` backend: Triton kernels of the ops, registered as torch.ops.nin_ext_triton.*.

Imported on the first use of the backend (nin_ext.ops), so that importing nin_ext does not import
triton. TRITON_INTERPRET=1 must be set before that (before `import nin_ext`, to be safe): the kernels
then run CPU tensors in Triton's interpreter.
"""
