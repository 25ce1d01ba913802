"""APScheduler for the corpus: an interval job runs three times, then the scheduler
shuts down."""

import threading

from apscheduler.schedulers.background import BackgroundScheduler


def main():
    runs = []
    done = threading.Event()

    def tick():
        runs.append(len(runs) + 1)
        if len(runs) == 3:
            done.set()

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(tick, "interval", seconds=0.2, id="tick")
    scheduler.start()
    finished = done.wait(timeout=30)
    scheduler.shutdown()
    print("apscheduler ran", runs[:3], "finished" if finished else "timed out")
    return 0 if finished else 1
