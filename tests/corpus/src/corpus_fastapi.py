"""A FastAPI app (ASGI) for the corpus: served by uvicorn with uvloop and httptools."""

import asyncio

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float


@app.get("/")
async def root():
    return {"ok": True}


@app.get("/loop")
async def loop():
    return {"loop": type(asyncio.get_running_loop()).__module__}


@app.post("/items")
async def create(item: Item):
    return {"name": item.name.upper(), "price": item.price * 2}
