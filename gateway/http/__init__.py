"""HTTP/1.1 on asyncio protocols: the client listener and the client to replicas.

It imports nothing else of the gateway (the contract in ``pyproject.toml``).
"""
