"""A gRPC server and client for the corpus, without generated stubs (generic handlers,
bytes in and out): `corpus-grpc serve PORT`, `corpus-grpc call PORT NAME`."""

import signal
import sys
import threading
from concurrent import futures

import grpc

METHOD = "/corpus.Greeter/Greet"


def greet(request: bytes, context) -> bytes:
    return b"hello " + request


def serve(port: int) -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "corpus.Greeter", {"Greet": grpc.unary_unary_rpc_method_handler(greet)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(f"grpc serving on {port}", flush=True)
    stopped.wait()
    server.stop(grace=2).wait()
    print("grpc stopped", flush=True)
    return 0


def call(port: int, name: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        greet = channel.unary_unary(METHOD)
        print(greet(name.encode(), timeout=10).decode())
    return 0


def main():
    command, port, *rest = sys.argv[1:]
    return serve(int(port)) if command == "serve" else call(int(port), *rest)
