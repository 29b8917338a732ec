"""The edge: accepting sockets, the upgrade stage, the upstream connect and handshake."""
