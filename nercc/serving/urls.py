"""The cluster description file (``urls.json``): where the masters and the workers of a cluster are.

Written by ``nercc serve --urls-file`` for a local cluster, or by hand (or by a deployment) for servers on
hosts of their own; read by the client, the demo, the load test and the simulator::

    {"model": "lenet5",
     "master_urls": ["10.0.0.1:8001"],
     "worker_urls": ["10.0.0.2:8001", "10.0.0.3:8001", ...],     # in worker order: index i is worker i
     "tls": false}

``master_url`` (one string) is accepted in place of ``master_urls``, as older files have it. Worker order
matters: the coded input i goes to worker i, and a worker's straggler stream and index follow its place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Union

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ClusterDescription:
    """Masters and workers of one cluster, as gRPC ``host:port`` strings."""

    model: str | None
    master_urls: List[str]
    worker_urls: List[str]
    tls: bool = False
    extra: dict = field(default_factory=dict)  # other keys of the file (straggler, seed...), kept as they are

    @property
    def master_url(self) -> str | None:
        return self.master_urls[0] if self.master_urls else None


def _check_url(url, what: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{what} must be a 'host:port' string, got {url!r}")
    url = url.strip()
    host, sep, port = url.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be 'host:port' with a port in 1..65535, got {url!r}")
    return url


def describe(model: str | None, master_urls: Sequence[str], worker_urls: Sequence[str], *, tls: bool = False,
             **extra) -> dict:
    """The JSON object of a description (``master_url`` kept beside ``master_urls`` for older readers)."""
    out = {"model": model, "master_urls": list(master_urls),
           "master_url": master_urls[0] if master_urls else None,
           "worker_urls": list(worker_urls), "tls": bool(tls)}
    out.update(extra)
    return out


def parse_urls(data: dict, source: str = "cluster description") -> ClusterDescription:
    """Validate a description object; errors name the file and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object with worker_urls, got {type(data).__name__}")
    workers = data.get("worker_urls")
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"{source}: 'worker_urls' must be a non-empty list of 'host:port' (in worker order)")
    workers = [_check_url(u, f"{source}: worker_urls[{i}]") for i, u in enumerate(workers)]
    if len(set(workers)) != len(workers):
        dup = sorted({u for u in workers if workers.count(u) > 1})
        raise ValueError(f"{source}: worker_urls lists {', '.join(dup)} more than once")
    masters = data.get("master_urls")
    if masters is None:
        single = data.get("master_url")
        masters = [] if single in (None, "") else [single]
    if not isinstance(masters, list):
        raise ValueError(f"{source}: 'master_urls' must be a list of 'host:port'")
    masters = [_check_url(u, f"{source}: master_urls[{i}]") for i, u in enumerate(masters)]
    known = {"model", "master_urls", "master_url", "worker_urls", "tls"}
    return ClusterDescription(model=data.get("model"), master_urls=masters, worker_urls=workers,
                              tls=bool(data.get("tls", False)),
                              extra={k: v for k, v in data.items() if k not in known})


def read_urls(path: PathLike) -> ClusterDescription:
    """Read and validate ``urls.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no cluster description at {path} (write one with `nercc serve --urls-file "
                                f"{path}` or by hand: docs/deploy.md)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return parse_urls(data, str(path))


def write_urls(path: PathLike, description: dict) -> Path:
    path = Path(path)
    parse_urls(description, str(path))  # never write a file that readers would refuse
    path.write_text(json.dumps(description, indent=2) + "\n")
    return path
