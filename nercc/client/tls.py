"""TLS for the coded client's gRPC channels (servers started with ``--tls-cert/--tls-key[/--tls-ca]``).

``ClientTLS(ca=..., cert=..., key=...)`` holds the PEM files; :meth:`ClientTLS.grpc_kwargs` gives tritonclient's
``ssl``, ``root_certificates``, ``private_key`` and ``certificate_chain``. ``cert``/``key`` are this client's
own pair, needed when the servers require client certificates (mutual TLS); ``ca`` verifies the servers
(None: the system's roots).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ClientTLS:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key and the key its certificate (--tls-cert with --tls-key)")
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None:
                path = Path(value).expanduser().resolve()
                if not path.is_file():
                    raise ValueError(f"TLS {name} file {value} does not exist")
                object.__setattr__(self, name, path)

    def grpc_kwargs(self) -> dict:
        """Keyword arguments of ``tritonclient.grpc[.aio].InferenceServerClient``."""
        kwargs = {"ssl": True, "root_certificates": None if self.ca is None else str(self.ca)}
        if self.cert is not None:
            kwargs.update(private_key=str(self.key), certificate_chain=str(self.cert))
        return kwargs

    @classmethod
    def from_options(cls, ca: PathLike | None, cert: PathLike | None, key: PathLike | None) -> ClientTLS | None:
        """None when no option is given (plaintext), else the files checked."""
        if ca is None and cert is None and key is None:
            return None
        return cls(ca=ca, cert=cert, key=key)


def add_client_tls_options(parser, prefix: str = "--tls") -> None:
    """``--tls-ca/--tls-cert/--tls-key`` on an argparse parser (demo, load test)."""
    group = parser.add_argument_group("TLS (gRPC to servers started with --tls-cert)")
    group.add_argument(f"{prefix}-ca", type=Path, default=None, help="CA (PEM) that signed the servers' certificates")
    group.add_argument(f"{prefix}-cert", type=Path, default=None, help="client certificate (PEM), for mutual TLS")
    group.add_argument(f"{prefix}-key", type=Path, default=None, help="client key (PEM), for mutual TLS")
