"""A Celery app for the corpus, with no broker service: kombu's filesystem transport
and the file result backend, both in the state dir (HOME). `corpus-celery worker ...`
is `celery -A corpus_celery worker ...`; `corpus-celery add X Y` sends a task and waits
for its result."""

import os
import sys

from celery import Celery

HOME = os.path.expanduser("~")
BROKER = os.path.join(HOME, "broker")
for sub in ("queue", "processed", "results"):
    os.makedirs(os.path.join(BROKER, sub), exist_ok=True)

app = Celery("corpus_celery", broker="filesystem://",
             backend="file://" + os.path.join(BROKER, "results"))
app.conf.broker_transport_options = {
    "data_folder_in": os.path.join(BROKER, "queue"),
    "data_folder_out": os.path.join(BROKER, "queue"),
    "processed_folder": os.path.join(BROKER, "processed"),
    "store_processed": True,
}
app.conf.broker_connection_retry_on_startup = True


@app.task
def add(x, y):
    return x + y


def main():
    command, *rest = sys.argv[1:]
    if command == "add":
        result = add.delay(int(rest[0]), int(rest[1]))
        print("result", result.get(timeout=60, interval=0.2))
        return 0
    app.worker_main(["worker", *rest])
    return 0
