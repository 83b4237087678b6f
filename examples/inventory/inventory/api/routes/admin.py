from fastapi import APIRouter
from sqlalchemy import func, select

from inventory.db import SessionDep
from inventory.models import Item
from inventory.schemas import Stats

router = APIRouter()


@router.get("/stats")
async def stats(session: SessionDep) -> Stats:
    count, quantity = (
        await session.execute(select(func.count(), func.coalesce(func.sum(Item.quantity), 0)))
    ).one()
    return Stats(items=count, quantity=quantity)
