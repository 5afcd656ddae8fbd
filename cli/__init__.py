"""The `vardist` command line (installed as the `vardist_cli` package)."""
