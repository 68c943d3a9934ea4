"""`server.pipelined`, the body of ProduceStream and FetchStream, on asyncio alone: answers
in completion order, at most `inflight_max` requests in progress, unanswered requests give
their slot back, a failing request ends the stream, and the stream ends once the client
has closed its side and everything is answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import structlog
from raftmq.broker.server import pipelined

LOG = structlog.get_logger("test")


async def requests(items: list[int], closed: asyncio.Event | None = None) -> AsyncIterator[int]:
    """The client's side: `items`, then closed (after `closed` is set, if given)."""
    for item in items:
        yield item
    if closed is not None:
        await closed.wait()


async def collect(answers: AsyncIterator[str]) -> list[str]:
    return [answer async for answer in answers]


def test_answers_come_in_completion_order_and_the_stream_ends_after_the_last() -> None:
    async def main() -> list[str]:
        released = {n: asyncio.Event() for n in range(3)}

        async def handle(n: int) -> str:
            await released[n].wait()
            return f"answer {n}"

        reading = asyncio.create_task(collect(pipelined(requests([0, 1, 2]), handle, 8, LOG, "t")))
        for n in (2, 0, 1):
            await asyncio.sleep(0.01)
            released[n].set()
        async with asyncio.timeout(5):
            return await reading

    assert asyncio.run(main()) == ["answer 2", "answer 0", "answer 1"]


def test_at_most_inflight_max_requests_are_in_progress() -> None:
    async def main() -> tuple[list[str], int]:
        in_progress = 0
        most = 0

        async def handle(n: int) -> str:
            nonlocal in_progress, most
            in_progress += 1
            most = max(most, in_progress)
            await asyncio.sleep(0.005)
            in_progress -= 1
            return str(n)

        async with asyncio.timeout(5):
            answers = await collect(pipelined(requests(list(range(10))), handle, 2, LOG, "t"))
        return answers, most

    answers, most = asyncio.run(main())
    assert sorted(answers, key=int) == [str(n) for n in range(10)]
    assert most == 2


def test_an_unanswered_request_gives_its_slot_back() -> None:
    """acks=0 produce requests get no answer; with one slot, the ones after them still
    run."""

    async def main() -> list[str]:
        async def handle(n: int) -> str | None:
            return None if n % 2 else f"answer {n}"

        async with asyncio.timeout(5):
            return await collect(pipelined(requests(list(range(6))), handle, 1, LOG, "t"))

    assert asyncio.run(main()) == ["answer 0", "answer 2", "answer 4"]


def test_a_request_that_fails_ends_the_stream_with_its_error() -> None:
    async def main() -> list[str]:
        closed = asyncio.Event()  # the client never closes: the failure must end it
        answered: list[str] = []

        async def handle(n: int) -> str:
            if n == 1:
                raise ValueError("a bug")
            return f"answer {n}"

        with pytest.raises(ValueError, match="a bug"):
            async with asyncio.timeout(5):
                async for answer in pipelined(requests([0, 1, 2], closed), handle, 1, LOG, "t"):
                    answered.append(answer)
        return answered

    assert asyncio.run(main()) == ["answer 0"]


def test_a_stream_whose_client_stays_open_waits_for_more_requests() -> None:
    async def main() -> list[str]:
        closed = asyncio.Event()
        answered: list[str] = []

        async def handle(n: int) -> str:
            return f"answer {n}"

        async def read() -> None:
            async for answer in pipelined(requests([7], closed), handle, 4, LOG, "t"):
                answered.append(answer)

        reading = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        assert answered == ["answer 7"] and not reading.done()
        closed.set()
        async with asyncio.timeout(5):
            await reading
        return answered

    assert asyncio.run(main()) == ["answer 7"]


def test_closing_the_stream_midway_cancels_the_requests_in_progress() -> None:
    """grpc ends a call (the client went) while long polls are in progress: closing the
    generator (as the servicer's aclosing does) cancels them at once."""

    async def main() -> tuple[list[str], int]:
        closed = asyncio.Event()
        cancelled = 0

        async def handle(n: int) -> str:
            nonlocal cancelled
            if n == 0:
                return "answer 0"
            try:
                await asyncio.sleep(60)  # a long poll that nothing fills
            except asyncio.CancelledError:
                cancelled += 1
                raise
            return f"answer {n}"

        answers = pipelined(requests([0, 1, 2], closed), handle, 4, LOG, "t")
        got = [await anext(answers)]
        await asyncio.sleep(0.01)  # requests 1 and 2 are in progress
        await answers.aclose()
        await asyncio.sleep(0)  # the cancellations run
        return got, cancelled

    assert asyncio.run(main()) == (["answer 0"], 2)
