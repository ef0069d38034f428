"""connector: reverse tunnels over QUIC, from Python.

An *agent* inside a private network dials out to a *server*; code next to the
server then opens TCP connections to any ``host:port`` the agent can reach::

    import connector
    from connector.testing import ThrowawayCa, EchoTarget

    ca = ThrowawayCa()
    cert, key = ca.issue("connector server", ["127.0.0.1"])
    with connector.Server(cert=cert, key=key, tokens={"s3cret": ("node-a", "*")}) as server, \\
         connector.Agent(server.address, ca=ca.cert_pem, agent_id="node-a", token="s3cret",
                         identifiers="host=node-a", allow=["127.0.0.1/32"]):
        server.wait_for_agents(agent_ids=["node-a"])
        with server.dial("127.0.0.1:8080", host="node-a") as stream:
            ...

Blocking calls release the GIL; ``await server.dial_async(...)`` is the asyncio
form. Errors derive from :class:`ConnectorError`. Rust logs go to
:mod:`logging` (see :mod:`connector.logs`).
"""

from __future__ import annotations

from . import _connector, errors
from ._connector import Accept, AgentInfo, AsyncStream, AuthRequest, Reject, Stream
from .agent import Agent
from .errors import *  # noqa: F403 (errors.__all__, re-exported below)
from .logs import _init as _init_logs
from .logs import flush_logs, set_log_level
from .server import Authenticator, Server, TokenSpec

__version__: str = _connector.__version__

__all__ = [
    "Accept",
    "Agent",
    "AgentInfo",
    "AsyncStream",
    "AuthRequest",
    "Authenticator",
    "Reject",
    "Server",
    "Stream",
    "TokenSpec",
    "flush_logs",
    "set_log_level",
]
# The exceptions are errors.py's, all of them; the whole list in alphabetical order.
__all__ += errors.__all__
__all__.sort()

_init_logs()
