"""The stack as local processes (`make up` without Docker): `python -m deploy.native`."""
