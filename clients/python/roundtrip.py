"""Round trip through a Python client generated from openapi/openapi.json
(openapi-python-client): mark, check, batch-mark, count, unmark, against a running node,
with id 2^63+5 and typed errors. Usage: roundtrip.py <base URL>; exits non-zero on the
first wrong answer."""

import sys

from bitark_client import Client
from bitark_client.api.reads import check, is_read, mark_many, mark_read, mark_unread, unread_count
from bitark_client.models import CheckRequest, CheckResult, ErrorBody, LsnResponse, MarkIds, MarkRange, ReadStatus, UnreadCount

BIG = str(2**63 + 5)
USER = str(2**64 - 1)


def expect(what, got, kind):
    if not isinstance(got, kind):
        sys.exit(f"{what}: expected {kind.__name__}, got {got!r}")
    return got


def main(base):
    client = Client(base_url=base, raise_on_unexpected_status=True)
    written = expect("mark", mark_read.sync(USER, BIG, client=client), LsnResponse)
    assert written.token == f"{written.epoch}:{written.lsn}", written

    status = expect("is-read", is_read.sync(USER, BIG, client=client, token=written.token), ReadStatus)
    assert status.read, status

    batch = MarkIds(msg_ids=[1, "2", BIG, str(2**64 - 1)])
    expect("batch mark", mark_many.sync(USER, client=client, body=batch), LsnResponse)
    expect("range mark", mark_many.sync(USER, client=client, body=MarkRange(from_="100", to=104)), LsnResponse)
    in_range = expect("is-read in the range", is_read.sync(USER, "102", client=client), ReadStatus)
    assert in_range.read, in_range
    flags = expect("check", check.sync(USER, client=client, body=CheckRequest(msg_ids=[BIG, "3", 2])), CheckResult)
    assert flags.read == [True, False, True], flags

    count = expect("count", unread_count.sync(USER, client=client, from_="0", to="9"), UnreadCount)
    assert count.unread == 8, count  # 1 and 2 are read

    expect("unmark", mark_unread.sync(USER, BIG, client=client), LsnResponse)
    status = expect("is-read after unmark", is_read.sync(USER, BIG, client=client), ReadStatus)
    assert not status.read, status

    # Typed errors: an id above the u64 maximum, and an empty batch.
    error = expect("id too large", is_read.sync(USER, "18446744073709551616", client=client), ErrorBody)
    assert error.error == "invalid_id", error
    error = expect("empty batch", check.sync(USER, client=client, body=CheckRequest(msg_ids=[])), ErrorBody)
    assert error.error == "empty_batch", error
    # A position the node will not reach: 503 lsn_not_reached, typed.
    error = expect("lsn not reached", check.sync(USER, client=client, body=CheckRequest(msg_ids=[1]), min_lsn="999999999"), ErrorBody)
    assert error.error == "lsn_not_reached", error
    print("python client: every call answered as documented")


if __name__ == "__main__":
    main(sys.argv[1])
