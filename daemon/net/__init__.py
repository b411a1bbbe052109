"""The network side: the HTTP front (h11), WebSocket connections, their output buffers,
keepalive pings, TLS, origin checks, rate limits and the web page with its static files.
"""
