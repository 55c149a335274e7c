"""Progress bars only for a person watching: tqdm redraws its line with
carriage returns, which in a log file or a CI capture become one flood of
partial lines. So the bars show only when both stdout and stderr are
terminals, and the lab's scripts print one summary line per epoch either way."""

import sys

from tqdm import tqdm


def interactive() -> bool:
    """True when both stdout and stderr (tqdm's stream) are terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def bar(iterable=None, **kwargs):
    """tqdm, disabled unless interactive() (a disabled tqdm still iterates and accepts set_postfix/update)."""
    kwargs.setdefault("disable", not interactive())
    return tqdm(iterable, **kwargs)
