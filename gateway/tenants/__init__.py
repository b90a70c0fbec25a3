"""Tenants: the limits each may use (limits.py), and what enforces them."""
