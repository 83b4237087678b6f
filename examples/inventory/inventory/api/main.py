from fastapi import APIRouter, Depends

from inventory.api.deps import require_api_key
from inventory.api.routes import admin, items

api_router = APIRouter()
api_router.include_router(items.router, prefix="/items", tags=["items"])
api_router.include_router(
    admin.router, prefix="/admin", tags=["admin"], dependencies=[Depends(require_api_key)]
)
