from pathlib import Path

SECRET_KEY = "corpus-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes"]
MIDDLEWARE = []
ROOT_URLCONF = "corpus_django.urls"
# The state dir: HOME under sandrun, the one place the app may write.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": Path.home() / "corpus.sqlite3"}}
USE_TZ = True
