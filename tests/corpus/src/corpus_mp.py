"""multiprocessing for the corpus: a Pool (fork and spawn), a Queue, a Lock and a
ProcessPoolExecutor, as data pipelines use them."""

import concurrent.futures
import multiprocessing


def square(n):
    return n * n


def producer(queue, lock):
    with lock:
        queue.put("from child")


def main():
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(2) as pool:
            print(method, "pool", pool.map(square, range(6)))
        queue, lock = ctx.Queue(), ctx.Lock()
        child = ctx.Process(target=producer, args=(queue, lock))
        child.start()
        print(method, "queue", queue.get(timeout=30))
        child.join(30)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        print("executor", sum(pool.map(square, range(10))))
    return 0
