"""The Docker driver: replicas as containers, through the Docker Engine API (docker SDK).

It and ``docker_events.py`` (the event stream) are the only modules that touch the
engine. A thin adapter: the autoscaler decides, this module carries out. Every blocking
SDK call runs in a worker thread (``asyncio.to_thread``).

What the engine holds is the gateway's only record outside memory, so everything it needs
after a restart is in the container labels: managed-by, the gateway's instance id, pool,
replica id and GPU ids.

Safety: ``list`` and ``events`` filter on our labels and our instance id in the engine, and
``stop`` inspects a container and refuses to touch it unless its labels say this instance
manages it and it is the replica asked for. Nothing is ever looked up or removed by a broad
name, and a look-alike with our labels but another instance id is invisible.

Reaching a replica (``Instance.url``, set only while a container is running) takes the port
from what the engine reports of the container, never from a label:
- any network but ``host`` (the default: ``bridge``): the server listens on ``spec.port``
  (also passed as ``$PORT``), published on 127.0.0.1 on a port the engine picks, so nothing
  is exposed beyond the host's loopback. ``reach="published"`` (the gateway runs on the
  host) uses that port mapping; ``reach="network"`` (the gateway runs in a container on the
  same user-defined network, the compose case) uses ``http://<container name>:<its private
  port>`` (the container's IP on the default ``bridge``, where names do not resolve);
- network ``host``, only when asked for: the driver picks a free host port, passes it as
  ``$PORT`` (and in place of ``{port}`` in the command), and ``HOST=127.0.0.1`` unless
  ``spec.env`` sets one; there is no port mapping, so the URL is
  ``http://127.0.0.1:<$PORT of the container's config>``, read by inspect once per container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import docker
import docker.errors
import docker.types

from gateway.control.drivers import (
    GPUS,
    INSTANCE,
    MANAGED_BY,
    MANAGER,
    POOL,
    REPLICA,
    Instance,
    InstanceState,
    ReplicaSpec,
    Tier,
    free_port,
)
from gateway.control.drivers.docker_events import container_events

log = logging.getLogger(__name__)

# The longest any one engine call may take (a stop: this plus its grace); the SDK's default
# is 60 s. A hung engine then fails calls, which the autoscaler counts and retries, instead
# of holding its loop; the event stream, open for good, has no such limit.
API_TIMEOUT_S = 30.0

Reach = Literal["published", "network"]


def container_name(replica_id: str) -> str:
    """``igw-<replica id>``, with characters Docker refuses in names replaced."""
    return "igw-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", replica_id)


def _state(status: str) -> InstanceState:
    # restarting, removing and dead replicas serve nothing: the loop replaces them
    if status in ("created", "running", "paused"):
        return status  # type: ignore[return-value]
    return "exited"


class DockerDriver:
    """The ``Driver`` protocol over the Docker Engine API, for the gateway ``instance``.

    ``client`` (a ``docker.DockerClient``) or ``base_url`` select the engine; by default
    ``docker.from_env()`` (``DOCKER_HOST`` or the local socket). The client is made on
    first use, in a thread, since making one already talks to the engine; its calls time
    out after ``API_TIMEOUT_S``.
    ``init`` runs Docker's tiny init as PID 1 so SIGTERM reaches the server even when the
    image does not handle signals itself; stops then drain instead of waiting for SIGKILL.
    """

    tiers: frozenset[Tier] = frozenset({"paused", "stopped"})

    def __init__(
        self,
        client: Any = None,
        *,
        instance: str,
        base_url: str | None = None,
        reach: Reach = "published",
        init: bool = True,
    ) -> None:
        self.instance = instance
        self.reach = reach
        self.init = init
        self._base_url = base_url
        self._client_obj: Any = client
        self._owns_client = client is None
        self._client_lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._streams: set[Any] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._host_ports: dict[str, int | None] = {}  # container id -> its $PORT (host network)

    async def _client(self) -> Any:
        if self._client_obj is None:
            async with self._client_lock:
                if self._client_obj is None:
                    base_url = self._base_url
                    self._client_obj = await asyncio.to_thread(
                        docker.from_env if base_url is None else docker.DockerClient,
                        timeout=API_TIMEOUT_S,
                        **({} if base_url is None else {"base_url": base_url}),
                    )
        return self._client_obj

    # -- the protocol ------------------------------------------------------------------

    async def list(self, pool: str) -> list[Instance]:
        """One engine call (the summary listing, no per-container inspect): cheap enough
        for every reconcile tick."""
        api = (await self._client()).api
        rows = await asyncio.to_thread(
            api.containers, all=True, filters={"label": [*self._ours(), f"{POOL}={pool}"]}
        )
        return [await self._instance(row) for row in rows]

    async def start(self, spec: ReplicaSpec) -> Instance:
        """Create, then start. A start that fails or is cancelled removes its container
        again: no orphan the caller does not know of, and a retry of the same spec never
        meets a name conflict."""
        return await self._launch(spec, start=True)

    async def create(self, spec: ReplicaSpec) -> Instance:
        """Create only, as ``start`` would (``created``, no address): what an engine with
        no GPU runtime can do with a GPU replica (the tests' GPU checks on this machine)."""
        return await self._launch(spec, start=False)

    async def _launch(self, spec: ReplicaSpec, start: bool) -> Instance:
        client = await self._client()
        host_net = spec.network == "host"
        port = free_port() if host_net else spec.port
        labels = {
            MANAGED_BY: MANAGER,
            INSTANCE: self.instance,
            POOL: spec.pool,
            REPLICA: spec.replica_id,
            GPUS: ",".join(spec.gpu_ids),
        }
        env = {**spec.env, "PORT": str(port)}
        if host_net:  # sharing the host's interfaces: listen on loopback unless told otherwise
            env.setdefault("HOST", "127.0.0.1")
        options: dict[str, Any] = {
            "name": container_name(spec.replica_id),
            "labels": labels,
            "environment": env,
            "init": self.init,
        }
        if spec.command:
            options["command"] = [arg.replace("{port}", str(port)) for arg in spec.command]
        if host_net:
            options["network_mode"] = "host"
        else:
            options["ports"] = {f"{spec.port}/tcp": ("127.0.0.1", None)}
            if spec.network != "bridge":
                options["network"] = spec.network
        if spec.gpu_ids:
            options["device_requests"] = [
                docker.types.DeviceRequest(device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])
            ]
        creating = asyncio.ensure_future(
            asyncio.to_thread(client.containers.create, spec.image, **options)
        )
        try:
            container = await asyncio.shield(creating)
        except asyncio.CancelledError:  # the thread goes on: remove what it creates
            creating.add_done_callback(self._discard_created)
            raise
        if host_net:
            self._host_ports[container.id] = port
        try:
            if start:
                await asyncio.to_thread(container.start)
            rows = await asyncio.to_thread(
                client.api.containers, all=True, filters={"id": container.id}
            )
        except BaseException:  # failed or cancelled: the caller will not know this replica
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(container.remove, force=True))
            raise
        if not rows:  # removed by someone else in between: report it as gone
            return Instance(spec.replica_id, spec.pool, "exited", None, spec.gpu_ids, container.id)
        return await self._instance(rows[0])

    async def stop(self, instance: Instance, timeout_s: float) -> None:
        """SIGTERM, SIGKILL after ``timeout_s`` (whole seconds, rounded up), then remove.
        Idempotent: a container already gone is fine. Refuses containers not ours."""
        try:
            attrs = await self._inspect_ours(instance, "stopping")
            if attrs is None:
                return
            cid = attrs["Id"]
            self._host_ports.pop(cid, None)
            await self._halt(attrs, timeout_s)
            api = (await self._client()).api
            await asyncio.to_thread(api.remove_container, cid, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "in progress" in str(exc):
                return  # someone (the engine, another stop) is already removing it
            raise

    async def pause(self, instance: Instance) -> None:
        attrs = await self._inspect_ours(instance, "pausing")
        if attrs is not None and not (attrs.get("State") or {}).get("Paused"):
            api = (await self._client()).api
            await asyncio.to_thread(api.pause, attrs["Id"])

    async def halt(self, instance: Instance, timeout_s: float) -> None:
        attrs = await self._inspect_ours(instance, "halting")
        if attrs is not None:
            await self._halt(attrs, timeout_s)

    async def wake(self, instance: Instance) -> Instance:
        attrs = await self._inspect_ours(instance, "waking")
        if attrs is None:
            raise LookupError(f"no replica {instance.replica_id} of ours to wake")
        api, cid = (await self._client()).api, attrs["Id"]
        state = attrs.get("State") or {}
        if state.get("Paused"):
            await asyncio.to_thread(api.unpause, cid)
        elif not state.get("Running"):
            await asyncio.to_thread(api.start, cid)
        rows = await asyncio.to_thread(api.containers, all=True, filters={"id": cid})
        if not rows:
            raise LookupError(f"replica {instance.replica_id} went while waking")
        return await self._instance(rows[0])

    def events(self) -> AsyncIterator[str]:
        """Pool names of our containers that started, stopped, died or were removed
        (``docker_events.container_events``: from the moment of the call, reconnecting
        after an engine restart). Hints may repeat; never rely on them for correctness."""
        return container_events(
            self._client, self._ours(), f"{time.time() - 1.0:.9f}", self._closing, self._streams
        )

    async def close(self) -> None:
        """End every event stream; close the client if this driver made it."""
        self._closing.set()
        if self._cleanups:
            await asyncio.wait(self._cleanups, timeout=10)
        for stream in list(self._streams):
            with contextlib.suppress(Exception):
                stream.close()
        if self._owns_client and self._client_obj is not None:
            client, self._client_obj = self._client_obj, None
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)

    # -- helpers -----------------------------------------------------------------------

    def _ours(self) -> tuple[str, str]:
        """The engine's label filter for containers of this gateway instance."""
        return (f"{MANAGED_BY}={MANAGER}", f"{INSTANCE}={self.instance}")

    async def _inspect_ours(self, instance: Instance, doing: str) -> dict[str, Any] | None:
        """The container's inspect, if its labels say it is ``instance`` and this gateway
        manages it; None (logged) for anything else. NotFound propagates."""
        api = (await self._client()).api
        ref = instance.handle or container_name(instance.replica_id)
        attrs: dict[str, Any] = await asyncio.to_thread(api.inspect_container, ref)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        ours = labels.get(MANAGED_BY) == MANAGER and labels.get(INSTANCE) == self.instance
        if not ours or labels.get(REPLICA) != instance.replica_id:
            log.warning("docker: not %s %s: not our replica %s", doing, ref, instance.replica_id)
            return None
        return attrs

    async def _halt(self, attrs: dict[str, Any], timeout_s: float) -> None:
        """Stop a running container, paused or not (a frozen one is thawed first, or the
        SIGTERM would wait for nothing); the container is kept."""
        state = attrs.get("State") or {}
        if not state.get("Running"):
            return
        api, cid = (await self._client()).api, attrs["Id"]
        if state.get("Paused"):
            await asyncio.to_thread(api.unpause, cid)
        await asyncio.to_thread(api.stop, cid, timeout=max(0, math.ceil(timeout_s)))

    def _discard_created(self, creating: asyncio.Future[Any]) -> None:
        """A start cancelled while its container was being created must not leave that
        container behind, unseen by the autoscaler until the next restart."""
        if creating.cancelled() or creating.exception() is not None:
            return
        container = creating.result()

        async def remove() -> None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(container.remove, force=True)

        task = asyncio.ensure_future(remove())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _instance(self, row: dict[str, Any]) -> Instance:
        """An Instance from a row of the engine's container listing (``/containers/json``)."""
        labels: dict[str, str] = row.get("Labels") or {}
        state = _state(str(row.get("State", "")))
        gpus = tuple(gpu for gpu in labels.get(GPUS, "").split(",") if gpu)
        return Instance(
            replica_id=labels.get(REPLICA, ""),
            pool=labels.get(POOL, ""),
            state=state,
            url=await self._url(row) if state == "running" else None,
            gpu_ids=gpus,
            handle=str(row["Id"]),
        )

    async def _url(self, row: dict[str, Any]) -> str | None:
        if (row.get("HostConfig") or {}).get("NetworkMode") == "host":
            port = await self._host_port(str(row["Id"]))
            return None if port is None else f"http://127.0.0.1:{port}"
        # the one port we publish, on loopback: (port in the container, port on the host)
        published = [
            (binding["PrivatePort"], binding["PublicPort"])
            for binding in row.get("Ports") or []
            if binding.get("PublicPort") and binding.get("IP") in ("127.0.0.1", None, "")
        ]
        if not published:
            return None
        private, public = published[0]
        if self.reach == "published":
            return f"http://127.0.0.1:{public}"
        networks: dict[str, Any] = (row.get("NetworkSettings") or {}).get("Networks") or {}
        if set(networks) <= {"bridge"}:  # the default bridge has no DNS for names
            address = (networks.get("bridge") or {}).get("IPAddress")
            return f"http://{address}:{private}" if address else None
        names = row.get("Names") or []
        return f"http://{names[0].lstrip('/')}:{private}" if names else None

    async def _host_port(self, cid: str) -> int | None:
        """The ``$PORT`` a host-networked container was created with, from its inspect (the
        listing has no config); kept per container, whose config never changes."""
        if cid not in self._host_ports:
            api = (await self._client()).api
            try:
                attrs = await asyncio.to_thread(api.inspect_container, cid)
            except docker.errors.NotFound:
                return None
            env = (attrs.get("Config") or {}).get("Env") or []
            ports = [item.removeprefix("PORT=") for item in env if item.startswith("PORT=")]
            self._host_ports[cid] = int(ports[-1]) if ports and ports[-1].isdigit() else None
        return self._host_ports[cid]
