"""Build: the checked model compiled into frozen values (route table, TLS contexts, the application index,
credentials, JWT keys, load-balancing orders); no sockets, no live state."""
