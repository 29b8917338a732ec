"""The policies: one module per policy type, the contract in ``base``, the type → class map in ``registry``.

Deliberately empty: importing ``gateway.policies.base`` (the relays do) must not
load every policy and the config models with it.
"""
