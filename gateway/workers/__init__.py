"""`wsgate run --workers N`: a supervisor process and N worker processes serving every port.

``supervisor`` checks and watches the config, reserves port numbers, runs the
admin listener and the echo servers, and restarts workers that die;
``worker`` is one Gateway told what to serve over a private control channel
(``control``). Each worker listens on every port with SO_REUSEPORT, so the
kernel spreads connections (benchmarks/accept_balance.py: more even than one
inherited socket).
"""
