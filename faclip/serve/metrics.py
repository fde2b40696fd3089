"""The server's Prometheus metrics: requests by route and status, latency, batch sizes, encode time, shed queries."""

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

if TYPE_CHECKING:
    from faclip.serve.admission import Admission

disable_created_metrics()  # no `_created` timestamp series next to each counter and histogram

HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, admission: "Admission | None" = None):
        self.registry = CollectorRegistry()
        self.requests = Counter("faclip_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("faclip_http_request_duration_seconds", "time from request to response",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("faclip_batch_size", "queries encoded in one forward pass", ["kind"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.encode_seconds = Histogram("faclip_encode_seconds", "time of one batched forward pass", ["kind"],
                                        registry=self.registry,
                                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.ready = Gauge("faclip_ready", "1 once the models are loaded", registry=self.registry)
        self.shed = Counter("faclip_queries_shed", "queries refused at once (503, Retry-After): the server was at "
                            "capacity", ["kind"], registry=self.registry)
        self.gone = Counter("faclip_queries_abandoned", "queries whose client disconnected before an answer "
                            "(dropped unencoded if their batch had not started)", ["kind"], registry=self.registry)
        if admission is not None:
            backlog = Gauge("faclip_backlog_seconds", "encoding the admitted queries need, at the measured rate "
                            "(a query is refused when it would exceed --max-queue-wait)", registry=self.registry)
            backlog.set_function(admission.backlog_s)
            admitted = Gauge("faclip_queries_admitted", "queries admitted and not yet answered", ["kind"],
                             registry=self.registry)
            for kind in admission.admitted:
                admitted.labels(kind).set_function(lambda kind=kind: admission.admitted[kind])

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.encode_seconds.labels(kind).observe(seconds)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"  # any token is a method: keep the label bounded
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
