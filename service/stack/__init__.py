"""The stack around any ASGI app, inside each worker (`service.stack.asgi`)."""
