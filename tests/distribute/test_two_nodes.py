"""Two machines, emulated: one replica in each of two network namespaces joined by a veth pair.

The namespaces, the veth pair and their addresses exist only for this test, inside this machine,
and are removed afterwards. Skips, saying why, where namespaces cannot be made (not root, no
iproute2, no permission).
"""

import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest

from test_distribute import _clean_env, load, single_process  # noqa: F401 (fixture)

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dp_program.py")
NODE_ADDRESSES = ("10.231.77.1", "10.231.77.2")


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def two_hosts():
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need iproute2 and root")
    tag = uuid.uuid4().hex[:6]
    names = (f"hpt-a-{tag}", f"hpt-b-{tag}")
    links = (f"hva{tag}", f"hvb{tag}")
    try:
        made = _ip("netns", "add", names[0], check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
        _ip("netns", "add", names[1])
        _ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for name, link, address in zip(names, links, NODE_ADDRESSES):
            _ip("link", "set", link, "netns", name)
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", name, "link", "set", link, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield names, links
    finally:
        for name in names:
            _ip("netns", "delete", name, check=False)


def test_one_replica_per_node_over_a_veth_pair_equals_one_process(two_hosts, single_process, tmp_path):  # noqa: F811
    names, links = two_hosts
    out = str(tmp_path / "two-nodes.npz")
    processes = []
    for node_rank, (name, link) in enumerate(zip(names, links)):
        env = {**_clean_env(), "GLOO_SOCKET_IFNAME": link}  # gloo talks over the veth, not loopback
        command = ["ip", "netns", "exec", name, sys.executable, "-m", "hpctrain.cli", "launch",
                   "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
                   f"--master-addr={NODE_ADDRESSES[0]}", "--master-port=29555",
                   PROGRAM, out, "adam", "static"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=env))
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    (arrays, meta), (reference, reference_meta) = load(out), single_process["adam", "static"]
    assert meta["world_size"] == 2
    for key in reference.files:
        np.testing.assert_allclose(arrays[key], reference[key], atol=1e-5, rtol=0)
    for key, values in reference_meta["history"].items():
        np.testing.assert_allclose(meta["history"][key], values, atol=1e-5)
