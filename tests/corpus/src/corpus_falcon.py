"""A Falcon app (WSGI) for the corpus: served by gunicorn's gthread workers."""

import threading

import falcon


class Echo:
    def on_get(self, req, resp):
        resp.media = {"echo": req.get_param("q", default=""),
                      "thread": threading.current_thread().name}


class Root:
    def on_get(self, req, resp):
        resp.text = "falcon ok\n"
        resp.content_type = falcon.MEDIA_TEXT


app = falcon.App()
app.add_route("/", Root())
app.add_route("/echo", Echo())
