"""The compiled extension behind ``connector`` (use the ``connector`` package's API)."""

from types import TracebackType
from typing import Awaitable, Callable, Dict, List, Literal, Optional, Tuple, Type, Union, final

__all__ = [
    "Server",
    "AgentInfo",
    "Agent",
    "Stream",
    "AsyncStream",
    "AuthRequest",
    "Accept",
    "Reject",
    "ThrowawayCa",
    "EchoTarget",
    "set_log_level",
    "flush_logs",
    "diagnostics",
    "wait_idle",
    "wait_busy",
    "rust_echo_transfer",
    "__version__",
]

__version__: str

_Buffer = Union[bytes, bytearray, memoryview]

@final
class AgentInfo:
    """A connected agent, as ``Server.agents()`` reports it."""

    @property
    def agent_id(self) -> str: ...
    @property
    def identity(self) -> str: ...
    @property
    def identifiers(self) -> str: ...
    @property
    def remote_addr(self) -> Optional[str]: ...
    @property
    def active_streams(self) -> int: ...
    @property
    def connected_for(self) -> float: ...

@final
class Stream:
    """A tunnelled TCP connection with blocking methods (GIL released, ``timeout`` honoured, Ctrl-C interrupts)."""

    @property
    def agent_id(self) -> str: ...
    @property
    def request_id(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    timeout: Optional[float]
    def read(self, max_bytes: Optional[int] = None) -> bytes: ...
    def readexactly(self, n: int) -> bytes: ...
    def readall(self) -> bytes: ...
    def write(self, data: _Buffer) -> int: ...
    def sendall(self, data: _Buffer) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Stream": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]: ...

@final
class AsyncStream:
    """A tunnelled TCP connection for asyncio; cancelling the awaiting task cancels the operation."""

    @property
    def agent_id(self) -> str: ...
    @property
    def request_id(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def read(self, max_bytes: Optional[int] = None) -> Awaitable[bytes]: ...
    def readexactly(self, n: int) -> Awaitable[bytes]: ...
    def readall(self) -> Awaitable[bytes]: ...
    def write(self, data: _Buffer) -> Awaitable[None]: ...
    def drain(self) -> Awaitable[None]: ...
    def shutdown_write(self) -> Awaitable[None]: ...
    def close(self) -> Awaitable[None]: ...
    def __aenter__(self) -> Awaitable["AsyncStream"]: ...
    def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Awaitable[Literal[False]]: ...

@final
class AuthRequest:
    """What the server knows about a connecting agent. ``token`` is a secret: never log it."""

    @property
    def agent_id(self) -> str: ...
    @property
    def identifiers(self) -> str: ...
    @property
    def token(self) -> Optional[str]: ...
    @property
    def remote_addr(self) -> Optional[str]: ...
    @property
    def certificates(self) -> List[bytes]: ...
    @property
    def certificate_name(self) -> Optional[str]: ...
    @property
    def certificate_identifiers(self) -> Optional[str]: ...

@final
class Accept:
    """Admit the agent as ``identity``; it may claim what ``allow`` covers (``"*"``: anything)."""

    def __new__(cls, identity: str, allow: str = "*") -> "Accept": ...
    @property
    def identity(self) -> str: ...
    @property
    def allow(self) -> str: ...

@final
class Reject:
    """Refuse the agent; ``reason`` is sent to it (never put a credential in it)."""

    def __new__(cls, reason: str = ...) -> "Reject": ...
    @property
    def reason(self) -> str: ...

@final
class Server:
    def __new__(
        cls,
        *,
        listen: str,
        cert_pem: bytes,
        key_pem: bytes,
        tokens: Optional[List[Tuple[str, str, Optional[str]]]] = None,
        tokens_file: Optional[str] = None,
        client_ca_pem: Optional[bytes] = None,
        client_certificates: Optional[str] = None,
        authenticator: Optional[Callable[[AuthRequest], Union[Accept, Reject]]] = None,
        server_id: Optional[str] = None,
        server_count: Optional[int] = None,
        max_agents: Optional[int] = None,
        max_streams_per_agent: Optional[int] = None,
        max_pending_dials: Optional[int] = None,
        hello_timeout: Optional[float] = None,
        dial_timeout: Optional[float] = None,
        keepalive: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        proxy_strategies: Optional[str] = None,
        tcp_listen: Optional[str] = None,
        congestion: Optional[str] = None,
        max_udp_payload: Optional[int] = None,
    ) -> "Server": ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tcp_address(self) -> Optional[str]: ...
    @property
    def server_id(self) -> str: ...
    def agents(self) -> List[AgentInfo]: ...
    def wait_for_agents(
        self, count: int = 1, agent_ids: List[str] = ..., timeout: Optional[float] = None
    ) -> List[AgentInfo]: ...
    def dial(
        self, target: str, agent: Optional[str] = None, host: Optional[str] = None, timeout: Optional[float] = None
    ) -> Stream: ...
    def dial_async(
        self, target: str, agent: Optional[str] = None, host: Optional[str] = None, timeout: Optional[float] = None
    ) -> Awaitable[AsyncStream]: ...
    def drain(self, grace: float = 30.0) -> None: ...
    def drain_async(self, grace: float = 30.0) -> Awaitable[None]: ...
    def close(self) -> None: ...

@final
class Agent:
    def __new__(
        cls,
        *,
        servers: List[str],
        ca_pem: bytes,
        agent_id: str,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        cert_pem: Optional[bytes] = None,
        key_pem: Optional[bytes] = None,
        server_name: Optional[str] = None,
        identifiers: str = "",
        allow: List[str] = ...,
        max_connections: Optional[int] = None,
        tunnel_idle_timeout: Optional[float] = None,
        tunnel_stall_timeout: Optional[float] = None,
        keepalive: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        transport: Optional[str] = None,
        tcp_server: Optional[str] = None,
        proxy: Optional[str] = None,
        quic_connect_timeout: Optional[float] = None,
        quic_probe_interval: Optional[float] = None,
        congestion: Optional[str] = None,
        max_udp_payload: Optional[int] = None,
    ) -> "Agent": ...
    @property
    def agent_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def status_reason(self) -> Optional[str]: ...
    def metrics(self) -> str: ...
    def wait_connected(self, timeout: Optional[float] = None) -> str: ...
    def stop(self) -> None: ...

@final
class ThrowawayCa:
    """An in-memory CA for tests and demos (never for production)."""

    def __new__(cls, name: str = "connector test CA") -> "ThrowawayCa": ...
    @property
    def cert_pem(self) -> str: ...
    def issue(self, common_name: str, names: List[str] = ...) -> Tuple[str, str]: ...

@final
class EchoTarget:
    """A TCP echo server on 127.0.0.1 (echoes until end of file, then half-closes)."""

    def __new__(cls, host: str = "127.0.0.1") -> "EchoTarget": ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    def close(self) -> None: ...

def set_log_level(level: int) -> None: ...
def flush_logs() -> None: ...
def diagnostics() -> Dict[str, int]: ...
def wait_idle(blocking_calls: int = 0, timeout: Optional[float] = None) -> None: ...
def rust_echo_transfer(
    server: Server, target: str, total: int, chunk: int = ..., agent: Optional[str] = None
) -> float: ...
def wait_busy(blocking_calls: int = 0, async_operations: int = 0, timeout: Optional[float] = None) -> None: ...
