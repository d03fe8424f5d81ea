"""The requests the API fuzz test sends, drawn by hypothesis: raw bytes, hand-made protobuf
wire data (wrong wire types, lying lengths, overflowing varints, invalid UTF-8, unknown
fields and enum numbers) and well-formed messages with hostile values.

A case names its task ids symbolically (`Ref`): the test resolves them when it
sends, to ids of tasks it has seen accepted, so cancels, requeues and
subscriptions also reach real tasks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import task_pb2

SERVICE = "/aiproc.v1.ProcessorService/"
UNARY = ("QueueTask", "GetTask", "CancelTask", "Stats", "ListTasks", "RequeueTask")
CLIENT_IDS = ("fuzz-a", "fuzz-b", "default")

# -- protobuf wire format, by hand, so that anything can be said ----------------------


def varint(n: int) -> bytes:
    """`n` as a varint; a negative one as its 64-bit two's complement, a huge one as is."""
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes, declared: int | None = None) -> bytes:
    """A length-delimited field; `declared` may lie about the length."""
    return key(number, 2) + varint(len(payload) if declared is None else declared) + payload


Kind = Literal["str", "bytes", "enum", "int64", "int32", "uint32", "bool"] | dict[int, Any]
DURATION: dict[int, Kind] = {1: "int64", 2: "int32"}
ENTRY: dict[int, Kind] = {1: "str", 2: "str"}
SPEC: dict[int, Kind] = {
    1: "str", 2: "str", 3: "enum", 4: DURATION, 5: "str", 6: "str", 7: "str", 8: ENTRY, 9: "uint32",
}  # fmt: skip
IDS: dict[int, Kind] = {1: "str"}
SCHEMAS: dict[str, dict[int, Kind]] = {
    "QueueTask": {1: SPEC},
    "GetTask": IDS,
    "CancelTask": IDS,
    "RequeueTask": IDS,
    "Stats": {},
    "ListTasks": {1: "enum", 2: "uint32"},
    "WatchEvents": {},
    "StreamResults": {1: {1: "str", 2: "bool", 3: "bool"}, 2: {1: "str"}},
}

_ints = st.one_of(
    st.integers(-(2**63), 2**64 + 10),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), 315_576_000_001]),
)
_invalid_utf8 = st.sampled_from(
    [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b", b"\xf4\x90\x80\x80"]
)
_string_bytes = st.one_of(
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    _invalid_utf8,
    st.binary(max_size=24),
    st.sampled_from([b"0" * 32, b"f" * 32, b"../etc/passwd"]),
)


def _value(number: int, kind: Kind, depth: int) -> st.SearchStrategy[bytes]:
    """Field `number` holding a value of its own `kind`: well-typed, hostile content."""
    if isinstance(kind, dict):
        return _message(kind, depth + 1).map(lambda body: length_delimited(number, body))
    if kind in ("str", "bytes"):
        return _string_bytes.map(lambda body: length_delimited(number, body))
    return _ints.map(lambda n: key(number, 0) + varint(n))


def _confused(number: int) -> st.SearchStrategy[bytes]:
    """Field `number` with any wire type, a length that lies, or a group or wire type 6/7."""
    return st.one_of(
        _ints.map(lambda n: key(number, 0) + varint(n)),
        st.binary(min_size=8, max_size=8).map(lambda b: key(number, 1) + b),
        st.binary(min_size=4, max_size=4).map(lambda b: key(number, 5) + b),
        st.tuples(st.binary(max_size=12), _ints).map(
            lambda p: length_delimited(number, p[0], declared=abs(p[1]))
        ),
        st.sampled_from([3, 4, 6, 7]).map(lambda wire_type: key(number, wire_type)),
    )


def _message(schema: dict[int, Kind], depth: int = 0) -> st.SearchStrategy[bytes]:
    numbers = sorted(schema) or [1]
    parts = [
        st.sampled_from(numbers).flatmap(_confused),
        # Unknown fields, field 0 (invalid), the reserved range and the largest number.
        st.sampled_from([0, 15, 99, 19_000, 2**29 - 1]).flatmap(_confused),
        st.binary(max_size=16),
    ]
    if schema and depth < 3:
        parts.append(st.sampled_from(sorted(schema.items())).flatmap(lambda i: _value(*i, depth)))
    return st.lists(st.one_of(*parts), max_size=5).map(b"".join)


# -- well-formed messages with hostile values --------------------------------------------

_huge = st.sampled_from([70_000, 140_000, 1_100_000]).map(lambda n: "x" * n)
_text = st.one_of(st.text(max_size=30), _huge)
_url = st.one_of(
    st.sampled_from(
        ["https://example.com/a", "http://[::1]:8080/x", "https://e.com/\u00e9", "http://a:0"]
    ),
    st.text(max_size=40),
    st.sampled_from(["", "ftp://x", "http://", "https://e.com:99999/", "https://e.com/a b"]),
)
_duration = st.builds(
    Duration, seconds=st.integers(-(2**63), 2**63 - 1), nanos=st.integers(-(2**31), 2**31 - 1)
)


def _mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """`valid` three times in four: whole specs get past validation often enough to reach
    the store, the queue and the workers with one or two hostile values in them."""
    return st.one_of(valid, valid, valid, hostile)


def _spec() -> st.SearchStrategy[task_pb2.TaskSpec]:
    return st.builds(
        task_pb2.TaskSpec,
        url=_mostly(st.just("https://example.com/a"), _url),
        content=_mostly(st.text(min_size=1, max_size=60).map(lambda t: t + " x"), _text),
        priority=_mostly(st.integers(0, 4), st.integers(-3, 8)),
        timeout=_mostly(st.none(), st.one_of(_duration, st.just(Duration(nanos=1)))),
        instructions=_mostly(st.just(""), _text),
        model=_mostly(st.just(""), st.text(max_size=200)),
        idempotency_key=_mostly(st.sampled_from(["", "k1", "k2"]), st.text(max_size=300)),
        metadata=_mostly(
            st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3),
            st.dictionaries(st.text(max_size=300), st.text(max_size=30), max_size=70),
        ),
        max_retries=_mostly(st.none(), st.integers(0, 2**32 - 1)),
    )


@dataclass(frozen=True, slots=True)
class Ref:
    """A task id to resolve at sending: a real accepted task's (`index` into those seen),
    or, with `index` None, `literal`."""

    index: int | None = None
    literal: str = ""


_ref = st.one_of(
    st.integers(0, 10_000).map(lambda i: Ref(index=i)),
    st.sampled_from(["0" * 32, "f" * 32, "", "ABC", "../x", "a" * 33]).map(
        lambda s: Ref(literal=s)
    ),
)

# -- the cases ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unary:
    method: str
    request: bytes | Callable[[list[str]], bytes]
    """Bytes to send, or a function of the accepted ids that makes them."""
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamCase:
    """A StreamResults call sending `messages` then half-closing, or a WatchEvents call."""

    method: Literal["StreamResults", "WatchEvents"]
    messages: tuple[bytes | Callable[[list[str]], bytes], ...] = ()
    metadata: tuple[tuple[str, str], ...] = field(default=())


Case = Unary | StreamCase

_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
_metadata = st.one_of(
    st.sampled_from(CLIENT_IDS).map(lambda c: (("aiproc-client-id", c),)),
    st.tuples(
        st.sampled_from(["aiproc-client-id", "traceparent", "tracestate", "baggage", "x-other"]),
        _printable,
    ).map(lambda entry: (entry,)),
    st.just((("aiproc-client-id", "fuzz-a"), ("aiproc-client-id", "fuzz-b"))),
    st.just((("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),)),
)


def _with_ids(make: Callable[[list[str]], Any], ref: Ref) -> Callable[[list[str]], bytes]:
    def build(accepted: list[str]) -> bytes:
        task_id = ref.literal
        if ref.index is not None:
            task_id = accepted[ref.index % len(accepted)] if accepted else "0" * 32
        return bytes(make([task_id]).SerializeToString())

    return build


def _unary_structured() -> st.SearchStrategy[Unary]:
    one_id = {
        "GetTask": lambda ids: pb.GetTaskRequest(task_id=ids[0]),
        "CancelTask": lambda ids: pb.CancelTaskRequest(task_id=ids[0]),
        "RequeueTask": lambda ids: pb.RequeueTaskRequest(task_id=ids[0]),
    }
    return st.one_of(
        st.builds(
            lambda spec, md: Unary(
                "QueueTask", pb.QueueTaskRequest(task=spec).SerializeToString(), md
            ),
            _spec(),
            _metadata,
        ),
        st.builds(
            lambda method, ref, md: Unary(method, _with_ids(one_id[method], ref), md),
            st.sampled_from(sorted(one_id)),
            _ref,
            _metadata,
        ),
        st.builds(
            lambda state, limit, md: Unary(
                "ListTasks", pb.ListTasksRequest(state=state, limit=limit).SerializeToString(), md
            ),
            st.integers(-2, 9),
            st.integers(0, 2**32 - 1),
            _metadata,
        ),
        st.builds(lambda md: Unary("Stats", b"", md), _metadata),
    )


def _stream_message() -> st.SearchStrategy[bytes | Callable[[list[str]], bytes]]:
    def subscribe(refs: list[Ref], all_tasks: bool, progress: bool) -> Callable[[list[str]], bytes]:
        def build(accepted: list[str]) -> bytes:
            ids = [_with_ids(lambda i: pb.GetTaskRequest(task_id=i[0]), r)(accepted) for r in refs]
            parsed = [pb.GetTaskRequest.FromString(raw).task_id for raw in ids]
            sub = pb.Subscribe(task_ids=parsed, all_tasks=all_tasks, include_progress=progress)
            return pb.StreamResultsRequest(subscribe=sub).SerializeToString()

        return build

    unknown_ids = st.lists(st.text("0123456789abcdef", min_size=32, max_size=32), max_size=50)
    return st.one_of(
        st.builds(subscribe, st.lists(_ref, max_size=4), st.booleans(), st.booleans()),
        unknown_ids.map(
            lambda ids: pb.StreamResultsRequest(ack=pb.Ack(task_ids=ids)).SerializeToString()
        ),
        st.just(pb.StreamResultsRequest().SerializeToString()),  # neither subscribe nor ack
        _message(SCHEMAS["StreamResults"]),
    )


def cases() -> st.SearchStrategy[Case]:
    """One request (or stream) of any of the kinds above."""
    raw_unary = st.builds(
        lambda method, body, md: Unary(method, body, md),
        st.sampled_from(UNARY),
        st.binary(max_size=64),
        _metadata,
    )
    wire_unary = st.sampled_from(UNARY).flatmap(
        lambda method: st.builds(
            lambda body, md: Unary(method, body, md), _message(SCHEMAS[method]), _metadata
        )
    )
    streams = st.one_of(
        st.builds(
            lambda messages, md: StreamCase("StreamResults", tuple(messages), md),
            st.lists(_stream_message(), max_size=6),
            _metadata,
        ),
        st.builds(
            lambda body, md: StreamCase("WatchEvents", (body,), md),
            st.one_of(st.just(b""), st.binary(max_size=16), _message({})),
            _metadata,
        ),
    )
    return st.one_of(raw_unary, wire_unary, _unary_structured(), _unary_structured(), streams)


BATCH = 25


def draw(batches: int, random_seed: int) -> list[Case]:
    """`batches` x 25 cases at most (hypothesis drops a draw that outgrows its buffer), the
    same ones for the same seed: hypothesis as a seeded generator, with no shrinking."""
    drawn: list[Case] = []

    @seed(random_seed)
    @settings(
        max_examples=batches,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(cases(), min_size=BATCH, max_size=BATCH))
    def collect(batch: list[Case]) -> None:
        drawn.extend(batch)

    collect()
    return drawn


# -- mutations of valid requests, drawn fast from a seeded generator --------------------


def _exemplars() -> dict[str, list[bytes]]:
    """Valid requests of each method, for the mutations to start from."""
    spec = task_pb2.TaskSpec(
        url="https://example.com/a",
        content="Some page text. It has sentences.",
        priority=task_pb2.PRIORITY_HIGH,
        timeout=Duration(seconds=5),
        instructions="Summarise.",
        metadata={"source": "fuzz"},
        max_retries=2,
    )
    task_id = "0123456789abcdef" * 2
    subscribe = pb.Subscribe(task_ids=[task_id], all_tasks=True, include_progress=True)
    return {
        "QueueTask": [pb.QueueTaskRequest(task=spec).SerializeToString()],
        "GetTask": [pb.GetTaskRequest(task_id=task_id).SerializeToString()],
        "CancelTask": [pb.CancelTaskRequest(task_id=task_id).SerializeToString()],
        "RequeueTask": [pb.RequeueTaskRequest(task_id=task_id).SerializeToString()],
        "ListTasks": [pb.ListTasksRequest(state=4, limit=10).SerializeToString()],
        "Stats": [b""],
        "StreamResults": [
            pb.StreamResultsRequest(subscribe=subscribe).SerializeToString(),
            pb.StreamResultsRequest(ack=pb.Ack(task_ids=[task_id] * 3)).SerializeToString(),
        ],
    }


def _mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(buffer) + 1)
        match rng.randrange(6):
            case 0 if buffer:
                buffer[min(where, len(buffer) - 1)] ^= 1 << rng.randrange(8)
            case 1 if buffer:
                buffer[min(where, len(buffer) - 1)] = rng.randrange(256)
            case 2:
                buffer[where:where] = rng.randbytes(rng.randint(1, 8))
            case 3:
                del buffer[where : where + rng.randint(1, 8)]
            case 4:
                del buffer[where:]
            case _:
                buffer[where:where] = rng.choice(others)
    return bytes(buffer)


def _valid_task(rng: random.Random) -> bytes:
    spec = task_pb2.TaskSpec(
        url=f"https://example.com/{rng.randrange(1000)}",
        content=" ".join(rng.choices(("Text.", "More words here.", "\u00e9\u4e2d"), k=8)),
        priority=rng.randrange(5),
        idempotency_key=rng.choice(("", "", "same-key", f"k{rng.randrange(50)}")),
        max_retries=rng.randrange(3),
    )
    if rng.random() < 0.5:
        spec.timeout.CopyFrom(Duration(seconds=rng.randrange(3), nanos=rng.randrange(10**9)))
    return pb.QueueTaskRequest(task=spec).SerializeToString()


def mutations(count: int, random_seed: int) -> list[Case]:
    """`count` cases: valid requests with bits flipped, bytes changed, inserted, deleted or cut,
    or other requests spliced in; and plain random bytes."""
    rng = random.Random(random_seed)
    exemplars = _exemplars()
    everything = [body for bodies in exemplars.values() for body in bodies]
    metadata = [(), *[(("aiproc-client-id", c),) for c in CLIENT_IDS]]
    drawn: list[Case] = []
    for _ in range(count):
        method = rng.choice(sorted(exemplars))
        if rng.random() < 0.15:
            body = rng.randbytes(rng.choice((1, 7, 60, 500)))
        elif method == "QueueTask" and rng.random() < 0.3:
            body = _valid_task(rng)  # tasks to accept, find again, cancel and requeue
        else:
            body = _mutate(rng, rng.choice(exemplars[method]), everything)
        md = rng.choice(metadata)
        if method == "StreamResults":
            drawn.append(StreamCase("StreamResults", (body,) * rng.randint(1, 3), md))
        else:
            drawn.append(Unary(method, body, md))
    return drawn


def floods(random_seed: int) -> list[Case]:
    """Oversized messages and metadata, and streams of thousands of acks and subscriptions for
    ids no task has."""
    rng = random.Random(random_seed)
    big = pb.QueueTaskRequest(task=task_pb2.TaskSpec(url="https://e.com", content="x" * (5 << 20)))
    drawn: list[Case] = [
        Unary("QueueTask", big.SerializeToString()),
        Unary("Stats", b"", (("x-padding", "p" * 20_000),)),
        Unary("GetTask", b"", (("aiproc-client-id", "a" * 17_000),)),
    ]
    for _ in range(4):
        ids = ["".join(rng.choices("0123456789abcdef", k=32)) for _ in range(40)]
        acks = [pb.StreamResultsRequest(ack=pb.Ack(task_ids=ids)).SerializeToString()] * 2000
        drawn.append(StreamCase("StreamResults", tuple(acks), (("aiproc-client-id", "fuzz-a"),)))
        subscribe = pb.Subscribe(task_ids=ids[:1], include_progress=True)
        unknown = pb.StreamResultsRequest(subscribe=subscribe).SerializeToString()
        everything = pb.StreamResultsRequest(subscribe=pb.Subscribe(all_tasks=True))
        flood = (everything.SerializeToString(),) * 500 + (unknown,)
        drawn.append(StreamCase("StreamResults", flood, (("aiproc-client-id", "fuzz-b"),)))
    return drawn
