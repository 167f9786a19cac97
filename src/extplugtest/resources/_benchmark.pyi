from extplugtest.coap._udp import FastResource

def benchmark_payload(get: bool, nnn: int, rlen: int) -> bytes: ...

class BenchmarkFastPath(FastResource):
    enabled: bool
    nnn: int
    max_body: int
    @property
    def answered_count(self) -> int: ...
