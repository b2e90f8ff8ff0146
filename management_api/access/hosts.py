"""Which ``Host`` headers the service answers: the DNS-rebinding guard (no Flask).

A page on a public site can make a browser resolve its own name to this machine and then read
the answers (DNS rebinding); the request then carries that public name in ``Host``. Ollama
(v0.20.5, ``allowedHostsMiddleware`` in server/routes.go) refuses such hosts with 403 while it
listens on loopback, which it does behind this service. The transport drops ``Host`` before
Ollama sees it, so the service applies the rule itself, on both ports, with two deliberate
widenings for container deployments:

* any IP literal passes (Ollama: loopback, private, unspecified or the machine's own): a
  rebinding attack needs a name, and LAN, VPN and NAT addresses reach Jetsons too;
* any name without a dot passes (Ollama: ``localhost`` and the machine's name only): compose and
  Kubernetes callers address the service by container or Service name (``llm-service``), and
  a single-label name is not one an attacker can register.

Also allowed, as Ollama does: no Host, ``localhost``, the machine's own name, names under
``.localhost``, ``.local`` and ``.internal``; and names under ``.svc`` (Kubernetes Service names
such as ``llm-service.default.svc``; ``….svc.cluster.local`` is under ``.local``). Anything else
must be listed in ``LLM_ALLOWED_HOSTS``: exact names, ``.example.com`` (or ``*.example.com``)
for a domain and its subdomains, or ``*`` to turn the check off.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".svc")


def host_name(header: str) -> str:
    """The name part of a Host header, lowercased: ``[::1]:80`` → ``::1``, ``a.b:1`` → ``a.b``
    (Go's net.SplitHostPort, falling back to the whole header as Ollama does, and without a
    trailing dot so that ``localhost.`` means ``localhost``)."""
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end != -1 else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.removesuffix(".")


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostPolicy:
    def __init__(self, allowed: Iterable[str] = (), machine_name: str | None = None) -> None:
        names: set[str] = set()
        domains: set[str] = set()
        for entry in (e.strip().lower().removesuffix(".") for e in allowed):
            if not entry:
                continue
            if entry.startswith("*."):
                entry = entry[1:]
            if entry.startswith("."):
                domains.add(entry)
                names.add(entry[1:])
            else:
                names.add(entry)
        self.any_host = "*" in names
        self.names = frozenset(names - {"*"})
        self.domains = tuple(sorted(domains))
        name = machine_name if machine_name is not None else socket.gethostname()
        self.machine_name = name.strip().lower().removesuffix(".")

    def allows(self, header: str | None) -> bool:
        if self.any_host or not header:
            return True
        host = host_name(header)
        if not host or "." not in host or host == self.machine_name:
            return True
        if is_ip_literal(host):
            return True
        if host.endswith(LOCAL_SUFFIXES) or host in self.names:
            return True
        return host.endswith(self.domains) if self.domains else False
