"""A Starlette app (ASGI) for the corpus: served by hypercorn."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def root(request):
    return PlainTextResponse("starlette ok\n")


async def square(request):
    n = int(request.path_params["n"])
    return JSONResponse({"n": n, "square": n * n})


app = Starlette(routes=[Route("/", root), Route("/square/{n:int}", square)])
