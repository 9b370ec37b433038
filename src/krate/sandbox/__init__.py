"""Sandbox backends: bubblewrap on Linux, Seatbelt (sandbox-exec) on macOS."""
