"""What the runtime needs from a source (a list queue or a stream consumer group)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tide_worker.envelope import Message
from tide_worker.records import DeadLetter


@dataclass
class Delivery:
    """One fetched message: ``raw`` as stored (list element or stream ``data``), decoded or not."""

    raw: bytes
    msg: Message | None
    error: str = ""  # why it could not be decoded (then msg is None)
    entry_id: str = ""  # stream entry id
    deliveries: int = 1  # stream delivery count
    origin: int = 0  # several queues: the index of the queue it came from (multisource.py)
    queue: str = ""  # several queues: its name
    suspect: bool = False  # a reap counted it interrupted: its fetch batch runs one message at a time

    @property
    def message_id(self) -> str:
        from tide_worker.envelope import plain_id

        return self.msg.id if self.msg is not None else (self.entry_id or plain_id(self.raw))


class Source(Protocol):
    name: str
    kind: str

    async def setup(self) -> None: ...

    acks_with_fetch: bool  # fetch() takes acks along (one round trip for both)

    # Up to count messages; block: wait server-side (up to the block timeout) when there are none.
    async def fetch(
        self, count: int, acks: Sequence[Delivery] = (), block: bool = True
    ) -> list[Delivery]: ...
    async def ack(self, deliveries: list[Delivery], counter: str = "processed") -> None: ...
    async def retry(self, delivery: Delivery, delay: float) -> bool: ...
    async def dead(self, delivery: Delivery, record: DeadLetter) -> bool: ...
    # Back to the consumer end, in fetch order: these / everything held / everything held but these.
    async def requeue(self, deliveries: list[Delivery]) -> int: ...
    async def requeue_all(self) -> int: ...
    async def recover(self, held: list[Delivery]) -> int: ...
    async def done_already(self, deliveries: list[Delivery]) -> list[bool]: ...
    async def heartbeat(self, record: bytes) -> None: ...
    async def touch(self, deliveries: list[Delivery]) -> None: ...
    async def deregister(self) -> bool: ...
    async def maintain(self) -> None: ...
    def maintenance_interval(self) -> float: ...
    async def reap(self) -> tuple[int, int]: ...  # (returned to the queue, dead-lettered as poison)
    # At shutdown: give up the reaper lease if this worker holds it, so another reaps without waiting.
    async def release(self) -> None: ...
