"""Running the app: who may bind where, the model's public id, and uvicorn with a graceful stop.

On SIGTERM or Ctrl-C the scheduler first cancels every generation (running or queued), so each open stream
ends with a final event at its next token; uvicorn then waits for the connections to finish and exits.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from pathlib import Path

import uvicorn

from macllm.errors import MacllmError
from macllm.loaded import ModelInfo
from macllm.server.app import ServerConfig, build_app
from macllm.server.scheduler import Scheduler

GRACEFUL_S = 10  # how long connections get to finish after a stop signal


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, api_key: str | None, insecure: bool) -> str | None:
    """Why serving on `host` is refused, or None. Anyone who can reach a non-loopback address can use the
    model, so that needs a key or an explicit --insecure."""
    if is_loopback(host) or api_key or insecure:
        return None
    return (f"--host {host} is reachable from other machines; give --api-key KEY (clients send "
            f"'Authorization: Bearer KEY') or --insecure to serve without one")


def model_id(info: ModelInfo) -> str:
    """A short id for /v1/models: a catalog name or repo id as given, else the file or folder name."""
    source = info.source
    path = Path(source).expanduser()
    if path.exists():
        return path.stem if path.is_file() else path.name
    return source


def port_problem(host: str, port: int) -> str | None:
    """Whether the port can be bound, checked before the model loads (a busy port fails in a second, not after
    the load)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or --host"
    return None


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, scheduler: Scheduler):
        super().__init__(config)
        self.scheduler = scheduler

    def handle_exit(self, sig, frame) -> None:
        """A stop signal: streams end with their final event instead of hanging on; a second Ctrl-C forces the
        exit. Unlike uvicorn's own handler, the signal is not raised again afterwards: the engine closes and the
        command exits 0, the stop was asked for."""
        self.scheduler.begin_shutdown()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def make_server(scheduler: Scheduler, config: ServerConfig, host: str, port: int,
                log_level: str = "warning") -> GracefulServer:
    app = build_app(scheduler, config)
    return GracefulServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                         timeout_graceful_shutdown=GRACEFUL_S, access_log=False), scheduler)


def serve(scheduler: Scheduler, config: ServerConfig, host: str, port: int, log_level: str = "warning") -> None:
    server = make_server(scheduler, config, host, port, log_level)
    server.run()
    if not server.started:
        raise MacllmError(f"the server could not listen on {host}:{port}; pick another --port or --host")
