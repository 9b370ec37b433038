"""The command line: Typer apps that parse, call one domain function, and render.

Command modules import only typer and the standard library at the top; anything
heavier (sqlite_utils, keyring, rich tables) is imported inside the command that
needs it, so start-up and TAB completion stay fast.
"""
