"""The argument check shared by the Python twins of csrc/*_checks.h."""


def check(condition, message):
    """Raises RuntimeError(message), torch._check's error, when condition is false. A plain `if`, not
    torch._check: Dynamo (torch 2.11) cannot trace torch._check's message closure, and every condition
    here is about shapes, dtypes and devices, which tracing sees as constants or guards."""
    if not condition:
        raise RuntimeError(message)
