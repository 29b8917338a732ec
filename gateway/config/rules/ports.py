"""Port rules: TLS files, and listeners (ports, echo servers, admin) that would bind the same port."""

from __future__ import annotations

from ..diagnostics import Related, error
from ..tree import Location
from .base import RuleContext, cert_and_key_must_exist, must_exist, rule

# A listener on one of these binds every address, so it clashes with any other on its port number.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


@rule
def port_tls_files(ctx: RuleContext) -> None:
    for e in ctx.of("Port"):
        tls = e.model.tls
        if tls is not None:
            cert_and_key_must_exist(ctx, e, ("tls",), tls.cert, tls.key)
            for i, sni in enumerate(tls.sni):
                cert_and_key_must_exist(ctx, e, ("tls", "sni", i), sni.cert, sni.key)
            if tls.client_certificates is not None:
                must_exist(ctx, e, ("tls", "client_certificates", "ca_file"), tls.client_certificates.ca_file,
                           "CA file")




@rule
def listener_clashes(ctx: RuleContext) -> None:
    listeners: list[tuple[int, str, str, Location]] = []
    for e in ctx.of("Port"):
        if e.model.enabled:
            listeners.append((e.model.port, e.model.host, f"Port '{e.name}'", e.doc.value_at(("port",))))
    for e in ctx.of("EchoServer"):
        listeners.append((e.model.port, e.model.host, f"EchoServer '{e.name}'", e.doc.value_at(("port",))))
    for e in ctx.of("Gateway")[:1]:
        admin = e.model.admin
        if admin.enabled and admin.port != 0:
            label = f"the admin endpoint of Gateway '{e.name}'"
            listeners.append((admin.port, admin.host, label, e.doc.value_at(("admin", "port"))))
    for i, (number, host, label, loc) in enumerate(listeners):
        if number == 0:
            continue  # the system picks a free port
        for other_number, other_host, other_label, other_loc in listeners[:i]:
            if number != other_number:
                continue
            if host == other_host or host in WILDCARD_HOSTS or other_host in WILDCARD_HOSTS:
                ctx.out.append(
                    error(
                        "WSG115",
                        f"{label} listens on port {number}, which {other_label} already uses",
                        loc,
                        related=(Related(other_loc, f"{other_label} is here"),),
                        hint="two listeners cannot bind the same port; change one port number",
                    )
                )
                break
