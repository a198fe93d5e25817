"""Exit statuses of the ferricd and shard processes, shared so the supervisor can tell why a shard exited."""

#: ferricd: another daemon holds the data or run directory.
EXIT_IN_USE = 1
#: ferricd: the configuration (file, flags, or the shard count recorded in the data directory) is invalid.
EXIT_CONFIG_ERROR = 2
#: A shard cannot start: directory locked, socket in use, bad settings. Retrying soon will not help.
EXIT_BOOT_ERROR = 3
#: A shard's data cannot be read or written. Retrying soon will not help.
EXIT_DATA_ERROR = 4
