"""The edge of the app: how errors, deadlines and the OpenAPI document answer clients."""
