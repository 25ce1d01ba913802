"""An aiohttp server for the corpus: `corpus-aiohttp PORT`."""

import sys

from aiohttp import web


async def root(request):
    return web.Response(text="aiohttp ok\n")


async def add(request):
    data = await request.json()
    return web.json_response({"sum": sum(data["numbers"])})


def main():
    app = web.Application()
    app.add_routes([web.get("/", root), web.post("/add", add)])
    # run_app turns SIGTERM into a graceful shutdown and returns.
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
    print("aiohttp stopped", flush=True)
    return 0
