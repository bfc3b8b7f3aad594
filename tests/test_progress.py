"""Progress output: a bar on a terminal, plain periodic lines in CI logs, silence with --quiet."""

from __future__ import annotations

import io

from pipelines.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_at_most_every_interval():
    log = io.StringIO()
    progress = Progress(100, "train default on cpu", stream=log, every_s=0.0)
    for _ in range(3):
        progress.update(1, loss="2.0000")
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("train default on cpu: 1/100 (1%), loss 2.0000")
    assert lines[-1].startswith("train default on cpu: 3/100 (3%)")

    quiet_interval = io.StringIO()
    progress = Progress(100, "train", stream=quiet_interval, every_s=3600)
    for _ in range(50):
        progress.update(1)
    assert quiet_interval.getvalue() == ""  # nothing before the interval has passed
    progress.close()
    assert quiet_interval.getvalue().splitlines() == [quiet_interval.getvalue().strip()]  # one closing line


def test_bar_on_a_terminal():
    tty = Terminal()
    progress = Progress(10, "prepare synthetic images", stream=tty)
    for _ in range(10):
        progress.update(1)
    progress.close()
    assert "prepare synthetic images" in tty.getvalue() and "10/10" in tty.getvalue() and "\r" in tty.getvalue()


def test_quiet_prints_nothing(capsys):
    log = Terminal()
    progress = Progress(10, "train", stream=log, quiet=True, every_s=0.0)
    progress.update(5)
    progress.write("TCAPPDLL line")
    progress.close()
    assert log.getvalue() == "" and capsys.readouterr().out == ""
