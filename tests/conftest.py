"""Shared fixtures: a real daemon on a real port, and real WebSocket clients."""
