"""Optional integrations with other tools (each imports without its tool installed)."""
