"""edge_agent.ota.heap: freed buffers are reused, not handed back to the kernel and faulted in afresh.

Counted in page faults, not time: a fresh subprocess whose malloc returns every freed page at once
(GLIBC_TUNABLES trim_threshold=0, the worst case of glibc's self-adjusting thresholds) allocates and
frees a 200 kB buffer 200 times, the pattern of paho reading block frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_agent.ota import heap

LOOP = """
import json, resource, sys
if sys.argv[1] == "keep":
    from edge_agent.ota.heap import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    buffer = bytearray(200_000)  # 49 pages, touched (zeroed)
    del buffer
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}
    out = subprocess.run([sys.executable, "-c", LOOP, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not heap.keep_freed_memory(), reason="malloc is not glibc's")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    assert _faults("default") > 200 * 40  # every buffer is fresh pages: the cost this module removes
    assert _faults("keep") < 200  # the first buffer's pages, then the same memory again
