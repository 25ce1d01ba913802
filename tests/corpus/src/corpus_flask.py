"""A Flask app (WSGI) for the corpus: served by gunicorn's sync workers."""

import os

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return "flask ok\n"


@app.get("/hello")
def hello():
    return jsonify(hello=request.args.get("name", "world"), pid=os.getpid())
