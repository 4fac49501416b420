"""Joining a Ray cluster (or starting a local one) for rsd-train's RLlib runs and rsd-rerank --ray.

``ray.init`` waits minutes on an address nobody listens at; ``connect`` first checks that the address
answers (a TCP connect, a few seconds) so a typo fails at once with a one-line error that says the fix.
"""

from __future__ import annotations

import os
import socket
from typing import Any

RLLIB_EXTRA = 'pip install -e ".[rllib]"'
CONNECT_TIMEOUT_S = 3.0


def require_ray() -> Any:
    """The ``ray`` module, or an error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise ValueError(f"Ray is not installed ({err}); install the optional extra: {RLLIB_EXTRA}") from err
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` / ``ray://HOST:PORT``; None for ``auto`` (Ray finds the local head)."""
    if address == "auto":
        return None
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad Ray address {address!r}: use HOST:PORT (the head's GCS port, 6379 by default, "
                         "as `ray start --head` prints), ray://HOST:10001 or auto")
    return host, int(port)


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (``ValueError``, one line) when nothing answers at ``address``."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one there with "
                         "`ray start --head`, fix the address, or drop it to run on a local Ray") from err


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """``ray.init`` once per process: join the cluster at ``address`` or start a local Ray (``num_cpus``),
    without the dashboard; an already initialised Ray is kept as it is. Returns the ``ray`` module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot join the Ray cluster at {address} ({message}); check `ray status` "
                             "on the head node") from err
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    return ray
