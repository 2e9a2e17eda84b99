"""Requests in flight hold their keys' and values' bytes: one that would not fit waits."""

from __future__ import annotations

import threading
import time

from qllm_core.memory import capacity
from qllm_core.memory.admission import Admission
from qllm_core.memory.capacity import KVNeed

GIB = 2**30


def test_a_request_that_does_not_fit_beside_another_waits_for_it():
    admission = Admission()
    need = KVNeed("ram", 6 * GIB, "RAM", "")
    free = lambda: 10 * GIB  # noqa: E731 - each fits alone, not both
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with admission.hold(need, free):
            order.append("first starts")
            first_in.set()
            time.sleep(0.3)
            order.append("first ends")

    def second() -> None:
        first_in.wait()
        with admission.hold(need, free):
            order.append("second starts")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["first starts", "first ends", "second starts"]
    assert admission.waits == 1


def test_requests_that_fit_together_run_together_and_one_alone_is_never_held():
    admission = Admission()
    small = KVNeed("ram", 2 * GIB, "RAM", "")
    with admission.hold(small, lambda: 10 * GIB), admission.hold(small, lambda: 10 * GIB):
        pass  # both inside at once: 4 GiB of 10
    huge = KVNeed("ram", 50 * GIB, "RAM", "")
    with admission.hold(huge, lambda: 1 * GIB):  # alone: the capacity check's call, not ours
        pass
    other_tier = KVNeed("disk", 9 * GIB, "disk", "")
    with admission.hold(small, lambda: 10 * GIB), admission.hold(other_tier, lambda: 10 * GIB):
        pass  # held bytes count per tier
    assert admission.waits == 0


def test_the_engine_holds_each_request_while_it_runs(tiny_engine, monkeypatch):
    need = capacity.kv_need(
        600,
        model_config=tiny_engine.model.config,
        config=tiny_engine.config,
        dtype=tiny_engine.dtype,
    )
    # room for one request's keys and values at a time, not two
    monkeypatch.setattr(capacity, "available_ram_bytes", lambda: need.nbytes * 3 // 2)
    document = " ".join(f"Item {i} of the list is the colour number {i % 13}." for i in range(40))
    answers = tiny_engine.answer_many(
        [(document, "Which colour is item 7?"), (document, "Which colour is item 9?")],
        max_new_tokens=4,
    )
    assert len(answers) == 2
    assert tiny_engine.pipeline.admission.waits == 1
