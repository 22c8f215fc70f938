"""What the load and slow-client tests measure: a server process's memory and descriptors,
and the artifacts a demo-seeded server offers, each by the URL and headers that fetch it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx

from tests.conftest import LiveServer, demo_job_of
from tests.fw_helpers import FireworksApi


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def stalled_sends(port: int) -> int:
    """Connections from a server port whose kernel send queue holds unacknowledged bytes:
    the server has written and the peer is not reading (``tx_queue`` in /proc/net/tcp)."""
    stalled = 0
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            tx_queue = int(fields[4].split(":")[0], 16)
            if local_port == port and tx_queue > 0:
                stalled += 1
    return stalled


@dataclass(frozen=True)
class Artifact:
    """One thing to download: ``kind`` groups them in reports (file, stored, merged, hub)."""

    kind: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()


def demo_artifacts(server: LiveServer) -> list[Artifact]:
    """Every download surface of the demo data: signed files, stored and merged archives,
    Hub files of the base model and of the merged fine-tune."""
    auth = (("Authorization", f"Bearer {server.admin_key}"),)
    ft_id = demo_job_of(server)
    base = server.base_url
    with httpx.Client(base_url=base, headers=dict(auth), timeout=60) as client:
        signed = client.get("/v1/accounts/admin/models/demo-llama:getDownloadEndpoint").json()
        merged_repo = client.get(f"/hf/api/models/admin/{ft_id}/revision/main").json()
    artifacts = [Artifact("file", url) for url in signed["filenameToSignedUrls"].values()]
    archive = f"{base}/v1/finetune/download?ft_id={ft_id}"
    artifacts += [
        Artifact("stored", f"{archive}&checkpoint=adapter", auth),
        Artifact("step", f"{archive}&checkpoint_step=10", auth),
        Artifact("merged", f"{archive}&checkpoint=merged", auth),
    ]
    artifacts += [
        Artifact("hub", f"{base}/hf/admin/{ft_id}/resolve/main/{s['rfilename']}", auth)
        for s in merged_repo["siblings"]
        if s["rfilename"].endswith(".safetensors")
    ]
    artifacts += [
        Artifact("hub", f"{base}/hf/admin/demo-llama/resolve/main/{path}", auth)
        for path in signed["filenameToSignedUrls"]
        if path.endswith(".json")
    ]
    return artifacts


def big_artifacts(server: LiveServer, size: int) -> list[Artifact]:
    """A model with one ``size``-byte file, published as admin: the same bytes by signed URL
    and by Hub resolve (large enough that a client that does not read stalls the server)."""
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    try:
        blob = os.urandom(size)
        signed = api.publish("load-big", {"config.json": b"{}", "big.bin": blob})
    finally:
        api.close()
    auth = (("Authorization", f"Bearer {server.admin_key}"),)
    return [
        Artifact("file", signed["big.bin"]),
        Artifact("hub", f"{server.base_url}/hf/admin/load-big/resolve/main/big.bin", auth),
    ]
