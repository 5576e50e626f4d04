"""CLI sub-commands, one module each, registered by `service.cli`."""
