"""``extclient benchmark``: options, and the output in Californium's BenchmarkClient formats.

The output is checked with regular expressions written after Californium's format strings
(``BenchmarkClient.java``, ``Statistic.Summary``); the runs go against the small responders of
test_loadgen.py on loopback, with short progress intervals. No assertion depends on timing.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.unit.test_loadgen import (
    ACK,
    Handler,
    Message,
    Responder,
    Send,
    observe_server,
    piggybacked,
    response,
)

from extplugtest.tools import benchmark, client

# Californium's format strings, as regular expressions ('.' as decimal point).
SHARE = r"\d+\.\d{2}%"
CREATE = re.compile(
    r"^Create (\d+) (none-stop )?(secure )?benchmark clients, expect to send (\d+) requests "
    r"overall to (\S+)$"
)
# Californium's per-client lines (its errorFilter'ed "Error after", and "failed after")
ERROR_AFTER = re.compile(
    r"^client-(\d+): Error after (\d+) (CON|NON)-requests\. (timeout \(\d+s\)|rejected|.+)"
    r"( \(\d+ additional errors\.\))?$"
)
FAILED_AFTER = re.compile(
    r"^client-(\d+): failed after (\d+) (CON|NON)-requests! (timeout \(\d+s\)|rejected|.+)$"
)
CREATED = re.compile(r"^Benchmark clients? created\. \d+ (ms|s)(, \d+ clients/s)?$")
PROGRESS = re.compile(
    rf"^\[(\d{{4}})\]: (\d+) requests \((\d+) reqs/s, (\d+) retransmissions( \({SHARE}"
    rf"(, no responses received!)?\))?, (\d+) transmission errors( \({SHARE}"
    rf"(, no responses received!)?\))?(, \d+ unavailables \([^)]*\))?, (\d+) clients"
    rf"(, (\d+) pending)?\)$"
)
STALE = re.compile(r"^\[(\d{4})\]: (\d+) requests, stale \((\d+) clients, (\d+) pending\)$")
NOTIFIES = re.compile(
    r"^\[(\d{4})\]: (\d+) notifies, (\d+) request \((\d+) notifies/s, (\d+) clients\)$"
)
FINISHED = re.compile(r"^(\d+) benchmark clients (finished|stopped|interrupted)\.$")
CLIENTS = re.compile(r"^ {0,3}(\d+) clients with (\d+)( to (\d+))? requests\.$")
SENT = re.compile(r"^(\d+) requests sent(, (\d+) expected)?$")
IN_TIME = re.compile(r"^(\d+) requests in (\d+) ms(, (\d+) reqs/s)?$")
STATISTIC = re.compile(
    r"^(connects          |success-responses |errors-responses  |single-blocks     ): "
    r"(no values available!|#: (\d+), (avg\.: \d+\.\d{2}|sum\.: \d+) ms, 95%: (\d+) ms, "
    r"99%: (\d+) ms, 99\.9%: (\d+) ms, max\.: (\d+) ms)$"
)


@pytest.fixture
def responder_factory() -> Iterator[Callable[[Handler], Responder]]:
    started: list[Responder] = []

    def start(handler: Handler) -> Responder:
        started.append(Responder(handler))
        return started[-1]

    yield start
    for responder in started:
        responder.close()


def run_cli(capsys: Any, *argv: str) -> tuple[int, list[str], str]:
    code = client.main(["benchmark", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def parse(*argv: str) -> Any:
    return client.build_parser().parse_args(["benchmark", "coap://127.0.0.1/x", *argv])


# -- options -----------------------------------------------------------------------------------


def test_defaults_are_californiums() -> None:
    args = parse()
    assert args.clients == 5 and args.requests is None and args.nstart == 1
    assert args.stop is True and args.non is False and args.method is None
    assert args.interval is None and args.blocksize is None and args.notifies is None
    assert args.reregister == args.register == 0
    assert args.progress_interval == 10.0 and args.plot is None


def test_option_parsing() -> None:
    args = parse(
        "--nstart", "4", "--interval", "250", "--timeout", "3000", "--no-stop",
        "--blocksize", "64", "--payload", "hi", "-m", "put", "--non",
    )  # fmt: skip
    assert (args.nstart, args.interval, args.timeout) == (4, 250, 3000)
    assert args.stop is False and args.blocksize == 64 and args.payload == "hi"
    assert args.method == "PUT" and args.non is True
    assert parse("--stop").stop is True
    args = parse("--notifies", "10", "--reregister", "2", "--register", "5")
    assert (args.notifies, args.reregister, args.register) == (10, 2, 5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nstart", "0"], "--nstart must be 1..32"),
        (["--nstart", "33"], "--nstart must be 1..32"),
        (["--clients", "20000", "--nstart", "5"], "--clients x --nstart must be at most 80000"),
        (["--interval", "-1"], "--interval must be"),
        (["--blocksize", "48"], "--blocksize must be 16, 32, ..., 1024"),
        (["--blocksize", "2048"], "--blocksize must be 16, 32, ..., 1024"),
        (["--timeout", "0"], "--timeout must be"),
        (["--notifies", "0"], "--notifies must be"),
        (["--reregister", "2"], "--reregister/--register need --notifies"),
        (["--notifies", "5", "-m", "POST"], "--notifies observes with GET"),
        (["--payloadhex", "zz"], "invalid payload"),
        (["--payload-file", "/nonexistent/payload"], "cannot read /nonexistent/payload"),
        (["--progress-interval", "0"], "--progress-interval must be"),
        (["--reverse", "0"], "--reverse must be"),
        (["--min", "50"], "--min/--max need --reverse"),
        (["--reverse", "5", "--notifies", "5"], "--reverse and --notifies exclude each other"),
        (["--start-at", str(time.time() + 100_000)], "--start-at must be within the next 600 s"),
    ],
)
def test_bad_options(capsys: Any, argv: list[str], message: str) -> None:
    code, _out, err = run_cli(capsys, "coap://127.0.0.1:9/x", *argv)
    assert code == 2
    assert err.startswith("extclient benchmark: error: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "intervals"),
    [
        ([], (100, 100)),
        (["--min", "20"], (20, 20)),
        (["--max", "300"], (300, 300)),
        (["--mininterval", "500", "--maxinterval", "200"], (200, 500)),
        (["--min", "-200", "--max", "200"], (-200, 200)),
    ],
)
def test_reverse_intervals_as_californium(argv: list[str], intervals: tuple[int, int]) -> None:
    args = parse("--reverse", "10", *argv)
    benchmark.reverse_intervals(args)
    assert (args.min_interval, args.max_interval) == intervals


def test_payload_options_exclude_each_other(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--payload", "a", "--payload-random", "3")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_bad_request_interval_from_environment(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("COAP_REQUEST_INTERVAL", "soon")
    code, _out, err = run_cli(capsys, "coap://127.0.0.1:9/x")
    assert code == 2 and "COAP_REQUEST_INTERVAL 'soon' is no number" in err


def test_plot_without_matplotlib(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    code, out, err = run_cli(capsys, "coap://127.0.0.1:9/x", "--plot", "out.png")
    assert code == 2 and out == []
    assert err == "extclient: --plot needs matplotlib: pip install 'extplugtest[plot]'\n"


# -- formats -----------------------------------------------------------------------------------

ZERO = dict.fromkeys(
    (
        "sent", "transmissions", "retransmissions", "success", "error_responses", "unavailable",
        "transmission_errors", "retried", "notifies", "active", "pending", "stopped_clients",
        "reverse_responses",
    ),
    0,
)  # fmt: skip


def test_progress_line_as_californium() -> None:
    now = {
        **ZERO, "sent": 286184, "transmissions": 286184, "success": 286180,
        "retransmissions": 4922, "active": 2000,
    }  # fmt: skip
    line = benchmark.progress_line(1, ZERO, now, 10.0)
    assert line == (
        "[0001]: 286184 requests (28618 reqs/s, 4922 retransmissions (1.72%), "
        "0 transmission errors (0.00%), 2000 clients)"
    )
    assert PROGRESS.match(line)
    # failed requests given back are not counted; no responses; pending clients; 5.03s
    later = {
        **now, "sent": 286200, "retried": 6, "transmissions": 286210,
        "transmission_errors": 6, "unavailable": 3, "pending": 2,
    }  # fmt: skip
    line = benchmark.progress_line(2, now, later, 10.0)
    assert line == (
        "[0002]: 286194 requests (0 reqs/s, 0 retransmissions (0.00%, no responses received!), "
        "6 transmission errors (60.00%, no responses received!), "
        "3 unavailables (no response-messages received!), 2000 clients, 2 pending)"
    )
    assert PROGRESS.match(line)
    # nothing sent in the interval: no shares
    line = benchmark.progress_line(3, later, later, 10.0)
    assert "0 retransmissions, 0 transmission errors, " in line and PROGRESS.match(line)


def test_other_progress_lines() -> None:
    now = {**ZERO, "sent": 12, "active": 3, "pending": 1, "notifies": 25}
    assert benchmark.stale_line(4, now) == "[0004]: 12 requests, stale (3 clients, 1 pending)"
    assert STALE.match(benchmark.stale_line(4, now))
    line = benchmark.notifies_line(5, ZERO, now, 10.0)
    assert line == "[0005]: 25 notifies, 12 request (3 notifies/s, 3 clients)"
    assert NOTIFIES.match(line)
    assert benchmark.notifies_stale_line(6, now) == (
        "[0006]: 25 notifies, 12 request, stale (3 clients)"
    )


def test_reverse_lines_as_californium() -> None:
    last = {**ZERO, "reverse_responses": 100, "feed_registrations": 0, "observers": 0}
    now = {**last, "reverse_responses": 350}
    assert benchmark.reverse_line(7, last, now, 10.0, 20) == (
        "[0007]: 350 reverse-responses (25 reverse-responses/s, 20 clients)"
    )
    assert benchmark.reverse_stale_line(8, now, 20) == (
        "[0008]: 350 reverse-responses, stale (20 clients)"
    )
    observed = {**now, "feed_registrations": 40, "observers": 19}
    assert benchmark.reverse_line(9, last, observed, 10.0, 20) == (
        "[0009]: 350 notifies (25 notifies/s, 20 clients, 19 observes)"
    )
    assert benchmark.reverse_stale_line(10, observed, 20) == (
        "[0010]: 350 notifies, stale (20 clients, 19 observes)"
    )
    result = {
        "reverse_responses": 350, "reverse_expected": 400, "duration_s": 2.0,
        "feed_registrations": 0, "feed_failures": 0,
    }  # fmt: skip
    assert benchmark.reverse_summary_lines(result) == [
        "350 reverse-responses sent, 400 expected",
        "350 reverse-responses in 2000 ms, 175 reverse-responses/s",
    ]
    result.update(feed_registrations=12, feed_failures=1)
    over = benchmark.reverse_summary_lines({**result, "reverse_responses": 401})
    assert over[0] == "400 notifies sent, 400 expected, 12 observe request"
    assert benchmark.reverse_summary_lines(result) == [
        "350 notifies sent, 400 expected, 12 observe request",
        "350 notifies sent in 2000 ms, 175 notifies/s",
        "1 sent notifies could not be completed",
    ]


def test_statistic_line_as_californium() -> None:
    empty = {"count": 0}
    assert benchmark.statistic_line("connects", empty) == (
        "connects          : no values available!"
    )
    fast = {"count": 10, "sum": 4_500, "p95": 900, "p99": 950, "p99.9": 999, "max": 1500}
    assert benchmark.statistic_line("success-responses", fast) == (
        "success-responses : #: 10, sum.: 4 ms, 95%: 0 ms, 99%: 0 ms, 99.9%: 0 ms, max.: 1 ms"
    )
    slow = {"count": 4, "sum": 50_000, "p95": 20_000, "p99": 21_000, "p99.9": 21_000,
            "max": 21_500}  # fmt: skip
    line = benchmark.statistic_line("errors-responses", slow)
    assert line == (
        "errors-responses  : #: 4, avg.: 12.50 ms, 95%: 20 ms, 99%: 21 ms, 99.9%: 21 ms, "
        "max.: 21 ms"
    )
    assert all(STATISTIC.match(benchmark.statistic_line("single-blocks", s)) for s in (fast, slow))


def test_client_histogram_as_californium() -> None:
    assert benchmark.client_requests_lines([7], 7) == []
    assert benchmark.client_requests_lines([20, 20, 20], 60) == ["   3 clients with 20 requests."]
    assert benchmark.client_requests_lines([9, 31, 12, 15, 38], 105) == [
        "   1 clients with 9 requests.",
        "   2 clients with 12 to 15 requests.",
        "   2 clients with 31 to 38 requests.",
    ]
    # above 500000 requests overall the groups are overall / 50000 wide
    assert benchmark.client_requests_lines([300000, 300005, 300030], 900000) == [
        "   2 clients with 300000 to 300005 requests.",
        "   1 clients with 300030 requests.",
    ]


def test_creation_lines() -> None:
    assert benchmark.created_line(1, 0.0123) == "Benchmark client created. 12 ms"
    assert benchmark.created_line(201, 0.5) == "Benchmark clients created. 500 ms, 400 clients/s"
    assert benchmark.created_line(3, 0.0004) == "Benchmark clients created. 0 ms"
    assert benchmark.created_line(2, 12.5) == "Benchmark clients created. 12 s, 0 clients/s"
    assert all(CREATED.match(benchmark.created_line(n, 0.5)) for n in (1, 2))


# -- runs --------------------------------------------------------------------------------------


def check_summary(lines: list[str], responses: int) -> None:
    """The summary part of a run's output, in Californium's order."""
    sent = next(i for i, line in enumerate(lines) if SENT.match(line))
    assert int(SENT.match(lines[sent]).group(1)) == responses  # type: ignore[union-attr]
    assert IN_TIME.match(lines[sent + 1])
    labels = [m.group(1).strip() for m in map(STATISTIC.match, lines) if m]
    assert labels == ["connects", "success-responses", "errors-responses", "single-blocks"]


def test_run_output_and_json(capsys: Any, tmp_path: Any, responder_factory: Any) -> None:
    responder = responder_factory(piggybacked)
    uri = f"coap://127.0.0.1:{responder.port}/benchmark"
    result_file = tmp_path / "result.json"
    code, lines, err = run_cli(
        capsys, uri, "--clients", "4", "--requests", "6", "--nstart", "2", "--interval", "200",
        "--progress-interval", "0.5", "--payload", "hello", "--json", str(result_file),
    )  # fmt: skip
    assert code == 0, err
    create = CREATE.match(lines[0])
    assert create and create.groups() == ("4", None, None, "24", uri)
    assert lines[1] == "Benchmark clients, first request successful."
    assert CREATED.match(lines[2]) and lines[3] == "Benchmark started."
    # each client makes 3 pauses of 200..699 ms: the run outlasts a progress interval
    progress = [PROGRESS.match(line) for line in lines if line.startswith("[")]
    assert progress and all(progress)
    assert [int(m.group(1)) for m in progress if m] == list(range(1, len(progress) + 1))
    finished = lines.index("4 benchmark clients finished.")
    assert CLIENTS.match(lines[finished + 1]).groups()[:2] == ("4", "6")  # type: ignore[union-attr]
    check_summary(lines, 24)
    assert any(line.startswith("latency           : #: ") for line in lines)
    result = json.loads(result_file.read_text())
    assert result["responses"] == result["success"] == 24
    assert (result["nstart"], result["interval_ms"], result["payload"]) == (2, 200, 5)
    assert result["client_requests"] == ["   4 clients with 6 requests."]
    series = result["series"]
    assert len(series) >= len(progress)
    assert series[-1]["requests"] == 24 and sum(entry["responses"] for entry in series) == 24
    assert set(series[0]) >= {
        "t_s", "timestamp", "interval_s", "requests", "req_per_s", "retransmissions",
        "transmission_errors",
    }  # fmt: skip
    assert sum(count for _, count in result["latency_histogram_us"]) == 24
    assert all(request.payload == b"hello" for request in responder.requests())


def test_start_at_waits_for_the_wall_clock(
    capsys: Any, tmp_path: Any, responder_factory: Any
) -> None:
    """--start-at: the clients connect first, the requests begin at that moment (generators
    side by side share a window); a moment already past is said and the run starts at once."""
    responder = responder_factory(piggybacked)
    uri = f"coap://127.0.0.1:{responder.port}/benchmark"
    result_file = tmp_path / "result.json"
    start_at = time.time() + 0.5
    code, lines, err = run_cli(
        capsys, uri, "--clients", "2", "--requests", "2", "--start-at", str(start_at),
        "--json", str(result_file),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(result_file.read_text())["started_at"] >= start_at
    code, lines, err = run_cli(
        capsys, uri, "--clients", "2", "--requests", "2", "--start-at", str(time.time() - 5)
    )
    assert code == 0, err
    assert any(line.startswith("--start-at passed ") for line in lines)
    assert "Benchmark started." in lines


def test_stale_run_is_stopped(capsys: Any, tmp_path: Any, responder_factory: Any) -> None:
    def answer_three(responder: Responder, request: Message, send: Send) -> None:
        if request.code and len(responder.requests()) <= 3:  # the first request and 2 more
            send(response(request, ACK))

    responder = responder_factory(answer_three)
    result_file = tmp_path / "result.json"
    code, lines, err = run_cli(
        capsys, f"coap://127.0.0.1:{responder.port}/x", "--clients", "2", "--requests", "5",
        "--no-stop", "--progress-interval", "0.2", "--json", str(result_file),
    )  # fmt: skip
    assert code == 0, err
    assert CREATE.match(lines[0]).group(2) == "none-stop "  # type: ignore[union-attr]
    stale = [m for m in map(STALE.match, lines) if m]
    assert len(stale) == 1 and stale[0].groups()[1:] == ("4", "2", "0")
    assert "2 benchmark clients stopped." in lines
    assert "Stale at 2 messages (20%)" in lines
    result = json.loads(result_file.read_text())
    assert result["stale"] is True and result["responses"] == 2


def test_observe_run(capsys: Any, responder_factory: Any) -> None:
    def slow_observe_server(responder: Responder, request: Message, send: Send) -> None:
        # slower than the watcher's 0.1 s: the registration phase is seen ending
        observe_server(responder, request, lambda out: responder.later(0.15, lambda: send(out)))

    responder = responder_factory(slow_observe_server)
    code, lines, err = run_cli(
        capsys, f"coap://127.0.0.1:{responder.port}/obs", "--clients", "1", "--notifies", "5",
        "--reregister", "2",
    )  # fmt: skip
    assert code == 0, err
    assert lines[1] == "Expect 5 notifies received, reregister every 2 and register every 0 notify"
    assert "Observe-Requests sent." in lines
    assert "5 notifies received, 5 expected" in lines
    assert all(r.code == 1 and r.observe == 0 for r in responder.requests())


def test_plot(capsys: Any, tmp_path: Any, responder_factory: Any) -> None:
    pytest.importorskip("matplotlib")
    responder = responder_factory(piggybacked)
    picture = tmp_path / "run.png"
    code, _lines, err = run_cli(
        capsys, f"coap://127.0.0.1:{responder.port}/x", "--clients", "2", "--requests", "20",
        "--plot", str(picture),
    )  # fmt: skip
    assert code == 0, err
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_clients_stopped_by_errors_end_the_run_as_stale(
    capsys: Any, responder_factory: Any
) -> None:
    def first_only(responder: Responder, request: Message, send: Send) -> None:
        # the first request (Californium's test()) is answered, then 4.04 for every one
        first = len(responder.requests()) == 1
        send(response(request, ACK, code=0x45 if first else 0x84))

    responder = responder_factory(first_only)
    code, lines, err = run_cli(
        capsys, f"coap://127.0.0.1:{responder.port}/x", "--clients", "3", "--requests", "4"
    )
    assert code == 0, err
    assert "Benchmark clients, first request successful." in lines
    # without --no-stop an error response ends its client
    assert "[0001]: 3 requests, stale (0 clients, 0 pending)" in lines
    assert "3 benchmark clients stopped." in lines
    assert "Stale at 3 messages (25%)" in lines
    # each client's only response was its first: a "connect"
    assert any(line.startswith("connects          : #: 3, ") for line in lines)


# -- failures ----------------------------------------------------------------------------------


def test_failed_first_request_ends_the_benchmark(capsys: Any, responder_factory: Any) -> None:
    """Californium's test(): a first request that fails (here a 4.04) ends the benchmark with
    its line, as one line on stderr, and a non-zero exit code."""
    responder = responder_factory(
        lambda responder, request, send: send(response(request, ACK, code=0x84))  # 4.04
    )
    uri = f"coap://127.0.0.1:{responder.port}/x"
    for extra in ([], ["--no-stop"]):
        code, lines, err = run_cli(capsys, uri, "--clients", "3", "--requests", "4", *extra)
        assert code == 1
        assert err == (
            f"extclient benchmark: error: Request {uri} POST failed, exit Benchmark. "
            "Answered with 4.04.\n"
        )
        assert "Benchmark started." not in lines
    assert len(responder.requests()) == 2  # the first requests only


def lose_first_token(responder: Responder, request: Message, send: Send) -> None:
    """Answers the first request (the test request), then loses every transmission of each
    client's first request: it fails, its retry is answered."""
    if not request.code:
        return
    seen = responder.__dict__.setdefault("lost", {})
    source = responder.sources[len(responder.received) - 1]
    if len(responder.requests()) > 1 and seen.setdefault(source, request.token) == request.token:
        return
    send(response(request, ACK))


def test_per_client_error_lines(capsys: Any, responder_factory: Any) -> None:
    """Californium's lines for a failed request: "Error after" when the client goes on
    (--no-stop), "failed after" when it stops."""
    responder = responder_factory(lose_first_token)
    uri = f"coap://127.0.0.1:{responder.port}/x"
    code, lines, err = run_cli(
        capsys, uri, "--clients", "2", "--requests", "2", "--no-stop", "--ack-timeout", "10",
        "--progress-interval", "5",  # the retry comes after 1 s: not stale
    )  # fmt: skip
    assert code == 0, err
    errors = [m for m in map(ERROR_AFTER.match, lines) if m]
    assert sorted(m.group(1) for m in errors) == ["0", "1"], lines
    assert all(m.group(2) == "0" and m.group(3) == "CON" for m in errors)
    assert all(m.group(4).startswith("timeout (") for m in errors)
    assert "2 benchmark clients finished." in lines

    responder = responder_factory(lose_first_token)
    uri = f"coap://127.0.0.1:{responder.port}/x"
    code, lines, err = run_cli(
        capsys, uri, "--clients", "2", "--requests", "2", "--ack-timeout", "10",
        "--progress-interval", "5",
    )  # fmt: skip
    assert code == 0, err
    failed = [m for m in map(FAILED_AFTER.match, lines) if m]
    assert sorted(m.group(1) for m in failed) == ["0", "1"], lines
    assert all(m.group(4).startswith("timeout (") for m in failed)
    assert "2 benchmark clients stopped." in lines


def test_error_lines_are_filtered_as_californiums() -> None:
    """FilteredLogger(3, 10 s): 3 lines a period, the first one after a period with more says
    how many there were."""
    now = [0.0]
    lines = benchmark.ErrorLines("CON", clock=lambda: now[0])
    events = [(i, 7, -2, 0, 3, False) for i in range(5)]
    shown = lines.lines(events, 0)
    assert shown == [f"client-{i}: Error after 7 CON-requests. timeout (3s)" for i in range(3)]
    now[0] = 10.5
    assert lines.lines([(9, 8, -1, 0, 0, False)], 2) == [
        "client-9: Error after 8 CON-requests. rejected (7 additional errors.)"
    ]
    # "failed after" is never filtered
    assert (
        lines.lines([(1, 0, -2, 0, 1, True)] * 4, 2)
        == ["client-1: failed after 0 CON-requests! timeout (1s)"] * 4
    )


class SilentGenerator:
    """A generator whose clients get no response (a DTLS server restarting), for watch():
    the run ends after *seconds*."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.stopped = False
        self.counters = dict(ZERO, active=2, reverse_responses=0, notifies=0, sent=2)

    def totals(self) -> dict[str, int]:
        return dict(self.counters)

    def join(self, timeout: float | None) -> bool:
        left = self.end - time.monotonic()
        if self.stopped or left <= 0:
            return True
        time.sleep(min(left, timeout if timeout is not None else left))
        return time.monotonic() >= self.end

    def stop(self) -> None:
        self.stopped = True

    def take_errors(self) -> tuple[list[Any], int]:
        return [], 0


@pytest.mark.parametrize(("dtls", "stale"), [(False, True), (True, False)])
def test_stale_check_waits_longer_for_dtls(capsys: Any, dtls: bool, stale: bool) -> None:
    """Californium: stale after 10 s + --interval without responses; over DTLS the interval
    part is at least 120 s (time for the clients' new handshakes). A 1 s pause with 0.1 s
    progress lines is stale over coap, not over coaps."""
    runner = benchmark.Runner(SilentGenerator(1.0))  # type: ignore[arg-type]
    seen = benchmark.watch(runner, 0.1, benchmark.Phases(clients=2, dtls=dtls))
    assert seen.stale is stale
    lines = capsys.readouterr().out.splitlines()
    assert any(STALE.match(line) for line in lines) is stale


# -- coaps opening lines and environment -------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-i", "me", "-s", "pw"], ["Use PSK.", "ID: me, pw"]),
        (["-i", "me"], ["Use PSK.", "ID: me"]),
        ([], ["Use PSK."]),
        (["-a", "ECDHE_PSK", "-i", "me", "-s", "pw"], ["Use PSK/ECDHE.", "ID: me, pw"]),
        (["-a", "RPK"], ["Use RPK."]),
        (["-a", "X509", "-i", "me"], ["Use X509."]),
        (["--cipher", "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"], ["Use X509."]),
    ],
)
def test_coaps_opening_lines(capsys: Any, argv: list[str], expected: list[str]) -> None:
    """Californium's lines before the clients are created: "secure", the authentication and
    the first client's identity (nobody listens here: the handshake fails after them)."""
    uri = f"coaps://127.0.0.1:{free_port()}/x"
    code, lines, err = run_cli(capsys, uri, "--clients", "1", "--requests", "2", *argv)
    assert code == 1 and err.count("\n") == 1, err
    assert (
        lines[0] == f"Create 1 secure benchmark clients, expect to send 2 requests overall to {uri}"
    )
    assert lines[1:] == expected


def test_psk_store_identity_line(capsys: Any, tmp_path: Any) -> None:
    store = tmp_path / "cali.psk"
    store.write_text("cali.1=c2VjcmV0MQ==\ncali.2=c2VjcmV0Mg==\n")
    uri = f"coaps://127.0.0.1:{free_port()}/x"
    _code, lines, _err = run_cli(
        capsys, uri, "--clients", "1", "--psk-store", str(store), "--psk-index", "1", "--no-stop"
    )
    assert lines[0].startswith("Create 1 none-stop secure benchmark clients")
    assert lines[1:] == ["Use PSK.", "ID: cali.2, secret2"]


def test_handshake_options_default_to_the_environment(monkeypatch: Any, capsys: Any) -> None:
    """benchmark.sh's COAPS_HANDSHAKES_FULL/CLOSE/BURST, for coaps:// (as Californium's
    Config.defaults()); an option given wins."""
    monkeypatch.setenv("COAPS_HANDSHAKES_FULL", "7")
    monkeypatch.setenv("COAPS_HANDSHAKES_BURST", "3")
    args = client.build_parser().parse_args(["benchmark", "coaps://127.0.0.1/x"])
    benchmark.benchmark_dtls.handshake_defaults(args, secure=True)
    assert (args.handshakes_full, args.handshakes_close, args.handshakes_burst) == (7, 0, 3)
    monkeypatch.setenv("COAPS_HANDSHAKES_CLOSE", "4")
    args = client.build_parser().parse_args(
        ["benchmark", "coaps://127.0.0.1/x", "--handshakes-full", "2", "--handshakes-burst", "1"]
    )
    benchmark.benchmark_dtls.handshake_defaults(args, secure=True)
    assert (args.handshakes_full, args.handshakes_close, args.handshakes_burst) == (2, 0, 1)
    args = client.build_parser().parse_args(["benchmark", "coaps://127.0.0.1/x"])
    benchmark.benchmark_dtls.handshake_defaults(args, secure=True)
    assert (args.handshakes_full, args.handshakes_close) == (0, 4)  # both: close wins
    args = parse()  # coap://: the environment does not count
    benchmark.benchmark_dtls.handshake_defaults(args, secure=False)
    assert (args.handshakes_full, args.handshakes_close, args.handshakes_burst) == (0, 0, 1)
    # in a run: the environment's renewals need --nstart 1, as the options do
    code, _out, err = run_cli(capsys, "coaps://127.0.0.1:9/x", "--nstart", "2")
    assert code == 2 and "--handshakes-full/-close need --nstart 1" in err
    monkeypatch.setenv("COAPS_HANDSHAKES_CLOSE", "often")
    code, _out, err = run_cli(capsys, "coaps://127.0.0.1:9/x")
    assert code == 2 and "COAPS_HANDSHAKES_CLOSE 'often' is no number" in err
