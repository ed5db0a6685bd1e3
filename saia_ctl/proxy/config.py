"""The proxy's settings: one dataclass, filled by the CLI (options or ``SAIA_PROXY_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProxyConfig:
    ssh_host: str
    host: str = "127.0.0.1"
    port: int = 8080
    ssh_port: int | None = None
    ssh_user: str | None = None
    ssh_key: str | None = None
    ssh_options: tuple[str, ...] = ()
    ssh_binary: str = "ssh"
    control_dir: str | None = None
    pool_size: int = 4
    max_sessions: int = 10
    keepalive_interval: float = 5.0
    connect_timeout: float = 10.0
    # First byte of an answer, and the longest silence inside one.
    timeout: float = 300.0
    control_timeout: float = 15.0
    control_persist: int = 300
    user_header: str = "X-Consumer-Custom-ID"
    default_user: str | None = None
    api_keys: str | None = None
    models_ttl: float = 5.0
    max_body: int = 64 * 1024 * 1024
    extra: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse values the proxy cannot work with (ValueError, one line)."""
        if not self.ssh_host:
            raise ValueError("no SSH host: pass --ssh-host or set SAIA_PROXY_SSH_HOST")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0-65535, not {self.port}")
        if self.ssh_port is not None and not 1 <= self.ssh_port <= 65535:
            raise ValueError(f"--ssh-port must be 1-65535, not {self.ssh_port}")
        if not 1 <= self.pool_size <= 64:
            raise ValueError(f"--pool-size must be 1-64, not {self.pool_size}")
        if self.max_sessions < 1:
            raise ValueError("--max-sessions must be at least 1")
        for name in ("keepalive_interval", "connect_timeout", "timeout", "control_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.models_ttl < 0:
            raise ValueError("--models-ttl must not be negative")
        for opt in self.ssh_options:
            if "=" not in opt or opt.startswith("-"):
                raise ValueError(f"--ssh-option must look like Name=value, not {opt!r}")
        for text, what in ((self.ssh_host, "--ssh-host"), (self.ssh_user or "", "--ssh-user")):
            if text.startswith("-") or any(c.isspace() for c in text):
                raise ValueError(f"{what} must not start with '-' or hold white space: {text!r}")
