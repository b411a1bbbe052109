"""The room engine and what it works with: rooms, sessions, effects, records, access.

Pure: nothing here imports trio, a socket, a file or a clock (an import-linter contract
in the test suite keeps it so). Inputs are events, outputs are effects.
"""
