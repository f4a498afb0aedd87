"""``hpctrain launch``: start one process per replica with PyTorch's own launcher (torchrun).

A thin mapping of hpctrain's options onto ``torch.distributed.run``; the rendezvous, restarts and
failure handling are torchrun's.
"""

from __future__ import annotations


def torchrun_arguments(*, nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str, master_port: int,
                       max_restarts: int, script: str, script_args: list[str]) -> list[str]:
    return [
        f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--node-rank={node_rank}",
        f"--master-addr={master_addr}", f"--master-port={master_port}", f"--max-restarts={max_restarts}",
        script, *script_args,
    ]


def launch(arguments: list[str]) -> int:
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(arguments)
    except SystemExit as exit_:  # torchrun exits with the failing worker's code
        return int(exit_.code or 0)
    except Exception as error:  # ChildFailedError: torchrun has already printed which rank failed and why
        print(f"hpctrain launch: {error}")
        return 1
    return 0
