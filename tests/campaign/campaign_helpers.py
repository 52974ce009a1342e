"""Helpers of the campaign tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import textwrap
import threading
import time

from megbed.measurements.dataset import read_dataset


def write_spec(folder, body: str, name: str = "c.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def alias_bomb(levels: int = 9, fan: int = 9) -> str:
    """A YAML alias bomb: ~340 bytes that expand to fan**levels strings."""
    lines = ['a: &a ["' + '","'.join(["lol"] * fan) + '"]']
    prev = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * fan) + "]")
        prev = name
    return "\n".join(lines) + "\n"


def wait_for_parts(run_dir, parts: int, timeout_s: float = 120.0, poll_s: float = 0.05) -> None:
    """Wait until the run's dataset holds ``parts`` Parquet parts (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(list((run_dir / "dataset").glob("part-*.parquet"))) < parts:
        time.sleep(poll_s)


def run_in_background(runner) -> tuple[threading.Thread, dict]:
    """Start ``runner.run()`` on a thread; its summary lands in the returned dict under ``"summary"``."""
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(summary=runner.run()))
    t.start()
    return t, result


def complete_dataset(run_dir, spec, *, each_once: bool = False):
    """The run's dataset (validated against the schema) after asserting every request of ``spec`` ended ok.

    ``each_once`` also asserts that no attempt's row was written twice and no request was measured twice.
    """
    df = read_dataset(run_dir)
    e2e = df[df.stage == "end_to_end"]
    ok = e2e[e2e.status == "ok"].request_id.str.replace(r"-a\d+$", "", regex=True)
    if each_once:
        assert not e2e.request_id.duplicated().any(), "an attempt's row was written twice"
        assert not ok.duplicated().any(), "a request was measured twice"
    assert set(ok) == {r.request_id for r in spec.requests()}, "a request was lost"
    return df
