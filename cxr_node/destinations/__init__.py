"""Where results go: one module per destination type behind a small interface (base.py),
found by type name in registry.py."""
