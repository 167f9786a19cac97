"""TD_COAP_OBS (plugtest-spec.md §1.7): CO01_12, CO02_05, CO04, CO06-CO10.

The server runs with ``--notify-interval 200ms``, so /obs changes five times a second. Waits are
bounded: a notification must come within Max-Age + 1 s (the checker's wait; capped at 6 s, see
``PlugtestTarget.notification_timeout``); "no (further) notification" is checked over
``target.quiet`` (5 notify intervals, at least 1 s). Every observation ends like the checker's
``stopObservation()``: GET Observe=1 with the same token, then a local cancel.

Notifications the server sent before it processed a request can still be in flight when the
request is answered; the checks below therefore look at what arrives after the server has
answered (for DELETE/PUT: from the request on), never at wall-clock timing.
"""

from __future__ import annotations

import time

from extplugtest.coap.codes import Code, ContentFormat, Type

TEXT = ContentFormat.TEXT_PLAIN


def observe_newer(previous: int, current: int) -> bool:
    """RFC 7641 §3.4 freshness (without the 128 s clause): V1 < V2 modulo 2^24."""
    return 0 < (current - previous) % (1 << 24) < (1 << 23)


def check_registration(reg, *, type: int) -> None:
    """The registration response: 2.05, token, Content-Format, non-empty payload, Observe."""
    assert reg.has_type(type), reg
    assert reg.code == Code.CONTENT, reg
    assert reg.token == reg.request.token, reg
    assert reg.has_content_format(), reg
    assert reg.payload, reg
    assert reg.observe is not None, f"registration answered without Observe: {reg}"


def check_notification(note, obs) -> None:
    """A 2.05 notification: token, Content-Format, non-empty payload, Observe."""
    assert note.code == Code.CONTENT, note
    assert note.token == obs.token, note
    assert note.has_content_format(), note
    assert note.payload, note
    assert note.observe is not None, note


def terminal_notification(obs, target, until: int):
    """The first notification that is not a 2.05 sent before the server handled the request.

    Notifications received up to position ``until`` (the request's answer) may be 2.05s that
    were in flight; the terminal one may also arrive before the answer. After the answer, the
    very next notification must be the terminal one.
    """
    for note in obs.received(until=until):
        if note.code != Code.CONTENT:
            return note
    return obs.next(target.notification_timeout(obs.registration.max_age))


def test_co01_12_observe_con_and_cancel(client, target):
    """CO01_12 (OBS_01 + OBS_12): CON GET /obs Observe=0; 5 notifications; GET Observe=1.

    Checker: within 5 s ACK, 2.05, token, Content-Format, non-empty, Observe. Then 5
    notifications, each within Max-Age+1 s: CON, 2.05, token, Content-Format, non-empty,
    Observe. The deregistration GET Observe=1 with the same token → a response without Observe
    within 10 s.
    TD: Observe increases modulo 2^24 (the registration's value below the first notification's);
    OBS_12: ACK 2.05, token t, no Observe; no further notifications.
    """
    with client.observe("obs") as obs:
        reg = obs.registration
        check_registration(reg, type=Type.ACK)
        timeout = target.notification_timeout(reg.max_age)
        previous = reg.observe
        for _ in range(5):
            note = obs.next(timeout)
            assert note.has_type(Type.CON), note
            check_notification(note, obs)
            assert observe_newer(previous, note.observe), f"Observe {previous} → {note}"
            previous = note.observe

        cancel = obs.cancel(timeout=10.0)
        assert cancel.observe is None, f"the cancel answer carries Observe: {cancel}"
        assert cancel.has_type(Type.ACK), cancel
        assert cancel.code == Code.CONTENT, cancel
        assert cancel.token == obs.token, cancel
        assert obs.silence(target.quiet) == [], "notifications after the Observe=1 cancel"


def test_co02_05_observe_non(client, target):
    """CO02_05 (OBS_02): NON GET /obs-non Observe=0.

    Checker: the first response NON 2.05 + Content-Format + token + Observe; then 6
    notifications (type not checked). Result "PASSED (conditionally)".
    TD: NON notifications (an occasional CON is allowed), same Content-Format, token,
    increasing Observe.
    """
    with client.observe("obs-non", type=Type.NON) as obs:
        reg = obs.registration
        check_registration(reg, type=Type.NON)
        timeout = target.notification_timeout(reg.max_age)
        notes = [obs.next(timeout) for _ in range(6)]
        previous = reg.observe
        for note in notes:
            check_notification(note, obs)
            assert note.content_format == reg.content_format, note
            assert observe_newer(previous, note.observe), f"Observe {previous} → {note}"
            previous = note.observe
        if client.has_message_types:
            non = sum(note.type == Type.NON for note in notes)
            assert non > len(notes) // 2, f"mostly CON notifications from /obs-non: {notes}"


def test_co04_server_reboot(client, target):
    """CO04 (OBS_04): after the 3rd notification POST /obs-reset ``sesame``; re-register.

    Checker: the server drops all relations silently; Max-Age+1 s passes with no notification
    (else "FAIL: Server not rebooted"). Re-registration with the same token → ACK 2.05 +
    Observe, then CON notifications resume.
    Here the quiet period is 2 × ``target.quiet`` (10 notify intervals) instead of Max-Age+1 s.
    """
    with client.observe("obs") as obs:
        reg = obs.registration
        check_registration(reg, type=Type.ACK)
        timeout = target.notification_timeout(reg.max_age)
        for _ in range(3):
            check_notification(obs.next(timeout), obs)

        reset = client.request(Code.POST, "obs-reset", payload="sesame")
        assert reset.code == Code.CHANGED, reset
        in_flight = obs.received(until=client.mark())
        assert all(note.code == Code.CONTENT for note in in_flight), (
            f"the reset was not silent: {in_flight}"
        )
        quiet = min(target.notification_timeout(reg.max_age), 2 * target.quiet)
        assert obs.silence(quiet) == [], "FAIL: Server not rebooted (notifications after reset)"

        with client.observe("obs", token=obs.token) as again:
            check_registration(again.registration, type=Type.ACK)
            note = again.next(timeout)
            assert note.has_type(Type.CON), note
            check_notification(note, again)


def test_co06_rst_cancels(client, target, udp_only):
    """CO06 (OBS_06): two CON notifications, then a local cancel; the client RSTs the next one.

    Checker: "PASSED (conditionally)". TD: no further notifications after the RST.
    """
    with client.observe("obs") as obs:
        reg = obs.registration
        check_registration(reg, type=Type.ACK)
        timeout = target.notification_timeout(reg.max_age)
        for _ in range(2):
            note = obs.next(timeout)
            assert note.has_type(Type.CON), note
            check_notification(note, obs)

        obs.forget()  # local cancel: the next CON notification is answered with RST
        rejected = obs.next(timeout)
        assert rejected.has_type(Type.CON), rejected
        assert obs.silence(target.quiet) == [], "notifications after the RST"


def test_co07_delete_clears_observers(client, target):
    """CO07 (OBS_07): DELETE /obs while observing it.

    Checker: DELETE → 2.02 (printed). The next notification, within Max-Age+1 s: 4.04, token,
    no Observe.
    TD: a CON 4.04 and no further notifications. §1.2: DELETE replies 2.02; the resource stays.
    """
    with client.observe("obs") as obs:
        reg = obs.registration
        check_registration(reg, type=Type.ACK)
        obs.next(target.notification_timeout(reg.max_age))

        deleted = client.request(Code.DELETE, "obs")
        assert deleted.code == Code.DELETED, deleted
        final = terminal_notification(obs, target, client.mark())
        assert final.code == Code.NOT_FOUND, f"not a 4.04 after DELETE: {final}"
        assert final.token == obs.token, final
        assert final.observe is None, f"the 4.04 carries Observe: {final}"
        assert final.has_type(Type.CON), final
        obs.forget()
        assert obs.silence(target.quiet) == [], "notifications after the 4.04"

    still_there = client.request(Code.GET, "obs")
    assert still_there.code == Code.CONTENT, f"/obs gone after DELETE: {still_there}"


def test_co08_format_change_clears_observers(client, target):
    """CO08 (OBS_08): PUT /obs with Content-Format 1, payload ``Random``, while observing.

    Checker: the server must accept the unregistered format (no 4.15). The next notification:
    4.06, token, no Observe.
    TD: a CON 4.06 and no further notifications. §1.7: /obs falls back to text/plain on its
    next tick (CO09 and CO10 depend on it).
    """
    with client.observe("obs") as obs:
        reg = obs.registration
        check_registration(reg, type=Type.ACK)
        obs.next(target.notification_timeout(reg.max_age))

        put = client.request(Code.PUT, "obs", content_format=1, payload="Random")
        assert put.code == Code.CHANGED, f"PUT with Content-Format 1 refused: {put}"
        final = terminal_notification(obs, target, client.mark())
        assert final.code == Code.NOT_ACCEPTABLE, f"not a 4.06 after the format change: {final}"
        assert final.token == obs.token, final
        assert final.observe is None, f"the 4.06 carries Observe: {final}"
        assert final.has_type(Type.CON), final
        obs.forget()
        assert obs.silence(target.quiet) == [], "notifications after the 4.06"

    deadline = time.monotonic() + 10 * target.notify_interval + 1.0
    while True:
        current = client.request(Code.GET, "obs")
        if current.content_format == TEXT or time.monotonic() > deadline:
            break
        time.sleep(target.notify_interval / 2)
    assert current.code == Code.CONTENT, current
    assert current.content_format == TEXT, f"/obs did not fall back to text/plain: {current}"


def test_co09_update_is_notified(client, target):
    """CO09 (OBS_09): PUT /obs ``New value`` (ct 0) while observing it.

    Checker: PUT → 2.04. The next notification, within 6 s, has the payload exactly
    ``New value``, 2.05, Observe, Content-Format, token ("notify immediately on PUT, before the
    5 s timer can overwrite it").
    Here: one of the notifications from the PUT up to the first one after its answer.
    TD: the same Content-Format, Observe increases.
    """
    with client.observe("obs") as obs:
        reg = obs.registration
        check_registration(reg, type=Type.ACK)
        timeout = target.notification_timeout(reg.max_age)
        previous = obs.next(timeout)

        put = client.request(Code.PUT, "obs", content_format=TEXT, payload="New value")
        assert put.code == Code.CHANGED, put
        notes = obs.received(until=client.mark())
        if not any(note.payload == b"New value" for note in notes):
            notes.append(obs.next(timeout))
        updates = [note for note in notes if note.payload == b"New value"]
        assert updates, f"the PUT body was not notified; notifications: {notes}"
        update = updates[0]
        check_notification(update, obs)
        assert update.content_format == TEXT, update
        assert observe_newer(previous.observe, update.observe), f"{previous} → {update}"


def test_co10_plain_get_does_not_cancel(client, target):
    """CO10 (OBS_10): after the 2nd notification, a CON GET /obs with a new token, no Observe.

    Checker: the GET is answered within Max-Age/2 with its own token and no Observe; later
    notifications still arrive.
    TD: ACK 2.05, token t2; notifications for t continue.
    """
    with client.observe("obs") as obs:
        reg = obs.registration
        check_registration(reg, type=Type.ACK)
        timeout = target.notification_timeout(reg.max_age)
        for _ in range(2):
            check_notification(obs.next(timeout), obs)

        plain = client.request(Code.GET, "obs", timeout=(reg.max_age or 10) / 2)
        assert plain.token == plain.request.token != obs.token, plain
        assert plain.observe is None, f"a plain GET answered with Observe: {plain}"
        assert plain.has_type(Type.ACK), plain
        assert plain.code == Code.CONTENT, plain

        after = client.mark()
        later = obs.next(timeout, after=after)
        check_notification(later, obs)


def test_obs_max_age(client):
    """§1.2/§3.1: /obs answers carry Max-Age (the reference: 5).

    "Missing Max-Age makes the checker wait 61 s per notification and OBS_04 re-registration
    take minutes."
    """
    with client.observe("obs") as obs:
        assert obs.registration.max_age is not None, obs.registration
        note = obs.next(6.0)
        assert note.max_age is not None, note
