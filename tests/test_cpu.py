import os
import subprocess
import sys

import pytest

PROBE = """
import resource, numpy as np, torch
from models.cpu import keep_large_allocations
applied = keep_large_allocations()
x = torch.from_numpy(np.ones((64, 2 ** 20 // 8), np.float32))  # 32 MB temporaries below
for _ in range(3):
    (x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    (x * 2).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(extra_env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra_env}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_large_activation_buffers_are_reused():
    applied, tuned = _faults({})
    skipped, default = _faults({"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20 - 1)})
    assert applied and not skipped  # a user's own malloc setting is respected
    # by default each 32 MB temporary is mmap-ed afresh: 8,192 page faults, 20 times
    assert default > 20 * 4000
    assert tuned < default / 3
