"""artgen.checkpoint: Ctrl-C between steps (the save/load round trips are tested by the trainers)."""

from __future__ import annotations

import os
import signal

import pytest

from artgen.checkpoint import StepInterrupt


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_inside_a_step_waits_for_the_step_to_end(sigint_default):
    before = signal.getsignal(signal.SIGINT)
    finished = []
    with pytest.raises(KeyboardInterrupt), StepInterrupt() as stop:
        for step in range(1, 4):
            stop.mid_step = True
            if step == 2:
                ctrl_c()  # deferred: the rest of step 2 still runs
            finished.append(step)
            stop.mid_step = False
            stop.raise_if_requested()
    assert finished == [1, 2]
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_ctrl_c_between_steps_or_twice_stops_at_once(sigint_default):
    with StepInterrupt() as stop:
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()  # not inside a step
        stop.mid_step = True
        ctrl_c()
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()  # a second Ctrl-C does not wait


def test_disabled_or_ignored_sigint_is_left_alone(sigint_default):
    before = signal.getsignal(signal.SIGINT)
    with StepInterrupt(enabled=False) as stop:  # several processes: Ctrl-C as usual
        stop.mid_step = True
        assert signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job ignores SIGINT
    try:
        with StepInterrupt() as stop:
            stop.mid_step = True
            ctrl_c()
            assert not stop.requested and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
