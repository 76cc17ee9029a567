# mitmproxy addon for the credential benchmark: the same header injection as the ringfence
# broker (x-api-key set to the secret on requests to the API host), and every upstream
# connection sent to 127.0.0.1 so that no name is resolved.
import os

from mitmproxy import http

API_HOST = os.environ["BENCH_API_HOST"]
SECRET = os.environ["BENCH_SECRET"]


def server_connect(data):
    data.server.address = ("127.0.0.1", data.server.address[1])


def request(flow: http.HTTPFlow) -> None:
    if flow.request.pretty_host == API_HOST:
        flow.request.headers["x-api-key"] = SECRET
