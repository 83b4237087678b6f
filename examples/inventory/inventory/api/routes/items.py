import logging

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from inventory.db import SessionDep
from inventory.models import Item
from inventory.schemas import ItemCreate, ItemOut

logger = logging.getLogger("inventory.items")

router = APIRouter()


@router.post("/", status_code=status.HTTP_201_CREATED)
async def create_item(item: ItemCreate, session: SessionDep) -> ItemOut:
    row = Item(**item.model_dump())
    session.add(row)
    await session.commit()
    await session.refresh(row)
    logger.info("item created: %s", row.id)
    return ItemOut.model_validate(row)


@router.get("/")
async def list_items(session: SessionDep, limit: int = 20) -> list[ItemOut]:
    rows = await session.scalars(select(Item).order_by(Item.id.desc()).limit(min(limit, 100)))
    return [ItemOut.model_validate(row) for row in rows]


@router.get("/{item_id}")
async def read_item(item_id: int, session: SessionDep) -> ItemOut:
    row = await session.get(Item, item_id)
    if row is None:
        raise HTTPException(status_code=404, detail="Item not found")
    return ItemOut.model_validate(row)
