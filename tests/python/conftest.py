"""Shared fixtures of the Python tests.

The package is imported from the installation (scripts/install_python.sh) when there is one,
else from python/ in this checkout (then only the torch backend works, unless
SONICMOE_TORCH_LIBRARY points at a built _sonicmoe_torch.so). Tests of the sonicmoe backend skip
with the reason when there is no Hopper GPU or no extension; the torch-backend tests run on CPU.

Inputs are fresh random numbers on every run; the seed is printed with every failure
(SONICMOE_TEST_SEED=<n> repeats a run).
"""
import os
import random
import sys

import pytest

try:
    import torch
except ImportError:  # pragma: no cover - scripts/test.sh runs pytest only where torch exists
    pytest.skip("PyTorch is not installed", allow_module_level=True)

try:
    import sonicmoe  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
    import sonicmoe  # noqa: F401


def sonicmoe_unavailable_reason():
    """Why the sonicmoe backend cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device (the sonicmoe backend needs a Hopper GPU)"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        return f"{torch.cuda.get_device_name()} is sm_{major}{minor}; the kernels are built for sm_90a (Hopper) only"
    if not sonicmoe.extension_available():
        return f"sonicmoe extension not available: {sonicmoe.extension_error()}"
    return None


requires_sonicmoe = pytest.mark.skipif(sonicmoe_unavailable_reason() is not None,
                                       reason=str(sonicmoe_unavailable_reason()))


@pytest.fixture
def seed(request):
    value = int(os.environ.get("SONICMOE_TEST_SEED", random.randrange(1 << 30)))
    torch.manual_seed(value)
    print(f"[seed] {request.node.name}: SONICMOE_TEST_SEED={value}")
    return value


@pytest.fixture(autouse=True)
def _no_tf32():
    # fp32 references must be fp32: TF32 would round their inputs to 10 mantissa bits.
    if torch.cuda.is_available():
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def pytest_report_header(config):
    """Which sonicmoe is tested, whether its extension loaded, and whether the installed Python
    files are stale against this checkout (reinstall with scripts/install_python.sh then)."""
    here = os.path.dirname(os.path.abspath(sonicmoe.__file__))
    checkout = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "python", "sonicmoe"))
    lines = [f"sonicmoe from {here}; extension: "
             + (sonicmoe.extension_path() if sonicmoe.extension_available() else f"not loaded ({sonicmoe.extension_error()})")]
    if here != checkout and os.path.isdir(checkout):
        stale = [name for name in sorted(os.listdir(checkout)) if name.endswith(".py")
                 and (not os.path.exists(os.path.join(here, name))
                      or open(os.path.join(here, name)).read() != open(os.path.join(checkout, name)).read())]
        if stale:
            lines.append(f"WARNING: the installed sonicmoe differs from this checkout in {stale}: "
                         "run scripts/install_python.sh")
    return lines
