"""Draw ``docs/_static/progress.png``: a real ``pmap`` and its progress bar, as a terminal shows it.

Run it from the root of a checkout, on Linux or macOS (it needs matplotlib, which
the ``bench`` extra installs)::

    python docs/progress_figure.py

It runs ``SWEEP`` below in a pseudo-terminal of ``COLUMNS`` x ``ROWS``, so that
EzPool sees a terminal and tqdm sizes the bar to it, replays what the program
wrote (carriage returns, line feeds, the escape codes tqdm uses) on a small
screen model, takes the screen when the bar passes ``SNAPSHOT_PERCENT``, and
draws that text with matplotlib. Nothing in the picture is typed by hand.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "_static" / "progress.png"
COLUMNS, ROWS = 92, 9
SNAPSHOT_PERCENT = 60
PROMPT = "$ python sweep.py"

#: The program in the picture: tasks that take a few tens of milliseconds, some of
#: which fail and one of which prints, on two processes, with the bar on.
SWEEP = '''
import time
from ezpool import Pool

def fit(alpha):
    time.sleep(0.02 + (alpha % 7) * 0.004)
    if alpha % 23 == 5:
        raise ValueError(f"alpha={alpha} does not converge")
    if alpha == 40:
        print("alpha=40: new best score 0.913")
    return alpha / 100

if __name__ == "__main__":
    with Pool(progress=True, msg="fit", capture_output=True) as pool:
        results = pool.pmap(fit, range(150), ncpu=2)
    print(results.summary())
'''


def run_in_terminal(source: str) -> bytes:
    """What ``source`` writes to a terminal of COLUMNS x ROWS, up to the snapshot."""
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "sweep.py"
        script.write_text(source, encoding="utf-8")
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS=str(COLUMNS))
        child = subprocess.Popen(
            [sys.executable, str(script)], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=directory
        )
        os.close(slave)
        written = b""
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                written += chunk
                if snapshot_reached(written):
                    break
        finally:
            child.kill()
            child.wait()
            os.close(master)
    return written


def snapshot_reached(written: bytes) -> bool:
    percents = re.findall(rb"(\d+)%\|", written)
    return bool(percents) and int(percents[-1]) >= SNAPSHOT_PERCENT


def screen(written: bytes) -> list[str]:
    """Replay terminal output on a screen model: enough of a terminal for tqdm."""
    lines = [PROMPT]
    row, column = 1, 0
    text = written.decode("utf-8", "replace")
    position = 0
    while position < len(text):
        escape = re.match(r"\x1b\[(\d*)([A-Za-z])", text[position:])
        if escape:
            count, command = int(escape.group(1) or 1), escape.group(2)
            if command == "A":
                row = max(0, row - count)
            elif command == "K":
                lines[row] = lines[row][:column]
            position += escape.end()
            continue
        char = text[position]
        position += 1
        while len(lines) <= row:
            lines.append("")
        if char == "\r":
            column = 0
        elif char == "\n":
            row, column = row + 1, 0
        elif char >= " ":
            line = lines[row].ljust(column)
            lines[row] = line[:column] + char + line[column + 1 :]
            column += 1
    return [line.rstrip() for line in lines][: ROWS + 1]


def draw(lines: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = {"family": "DejaVu Sans Mono", "size": 11}
    rows = len(lines) + 1
    figure = plt.figure(figsize=(COLUMNS * 0.105, rows * 0.23 + 0.2), dpi=150)
    figure.patch.set_facecolor("#1e1e2e")
    axes = figure.add_axes((0.015, 0.02, 0.97, 0.96))
    axes.set_axis_off()
    axes.set_xlim(0, COLUMNS)
    axes.set_ylim(rows, 0)
    for number, line in enumerate(lines):
        colour = "#a6e3a1" if line.startswith("$") else "#cdd6f4"
        axes.text(0, number + 0.8, line, color=colour, fontdict=font)
    figure.savefig(path, facecolor=figure.get_facecolor())
    plt.close(figure)


def main() -> None:
    lines = screen(run_in_terminal(SWEEP))
    print("\n".join(lines))
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    draw(lines, OUTPUT)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
