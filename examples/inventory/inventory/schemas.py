"""What the API takes and answers."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field


class ItemCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    owner_email: EmailStr
    quantity: int = Field(default=0, ge=0)


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    owner_email: str
    quantity: int
    created_at: datetime


class Stats(BaseModel):
    items: int
    quantity: int
