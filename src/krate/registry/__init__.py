"""Registry transport, authentication and keychain credentials (login/push)."""
