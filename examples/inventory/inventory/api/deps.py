from typing import Annotated

from fastapi import Header, HTTPException

from inventory import config


async def require_api_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
    if x_api_key != config.API_KEY:
        raise HTTPException(status_code=401, detail="Missing or wrong API key")
