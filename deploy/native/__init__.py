"""Native mode: the stack as local processes."""
