"""Hostile clients and a misbehaving replica against the gateway and its peers."""
