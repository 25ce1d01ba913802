"""A Django project for the corpus: its sqlite database lives in the app's state dir
(HOME under sandrun). `corpus-django manage ARGS` is manage.py; `corpus-django gunicorn
ARGS` serves it with gunicorn (one bundle, the two commands a deployment runs)."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "corpus_django.settings")
    command, *rest = sys.argv[1:] or ["manage"]
    if command == "gunicorn":
        from gunicorn.app.wsgiapp import run

        sys.argv = ["gunicorn", *rest, "corpus_django.wsgi:application"]
        return run()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage", *rest])
    return 0
