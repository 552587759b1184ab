"""Check that ``optuna-dashboard studies.db`` really shows a study, in a real headless browser.

    python -m studies.dashboard studies.db --study NAME --screenshot out.png

Starts ``optuna-dashboard`` on a free loopback port, asks its JSON API for the study (the server
loaded it), then drives Debian's headless chromium: the study page must show the study's name, and
one trial's page must display its ``latency_ms`` and ``macs`` user attributes with the values the
API holds. The trial page, scrolled to those attributes, is saved as a PNG. Server and browser are
always killed; every wait is bounded.

Interpretation: page routes are those of optuna-dashboard 0.21's app (``/dashboard/studies/<id>``,
``/dashboard/studies/<id>/trials?numbers=<n>``, read from its bundle.js). The trial page lists user
attributes in a box 150 px high, so a search trial's ``macs`` is scrolled out
of view; chromium's one-shot ``--dump-dom``/``--screenshot`` cannot scroll, hence the DevTools
protocol over ``--remote-debugging-pipe`` (standard library only, no WebDriver).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studies._chromium import HeadlessChromium, find_chromium, kill_group

ATTRIBUTES = ("latency_ms", "macs")  # user attributes every search trial records, checked on the page


@dataclass(frozen=True)
class DashboardReport:
    """What the browser saw."""

    study_name: str
    study_id: int  # the dashboard's id of the study, used in its URLs
    n_trials: int  # trials the dashboard's API returned
    trial_number: int  # the trial whose page was checked and captured (the best complete one if any)
    attributes_seen: dict[str, str]  # user attribute -> value, as displayed on the trial page
    attributes_in_screenshot: tuple[str, ...]  # those of them inside the visible part of the PNG
    screenshot: Path  # PNG of the trial page
    url: str  # the trial page's URL (valid only while the server ran)


def check_dashboard(storage: str | os.PathLike[str], screenshot: str | os.PathLike[str],
                    study_name: str | None = None, attributes: tuple[str, ...] = ATTRIBUTES,
                    chromium: str | None = None, timeout_s: float = 60.0) -> DashboardReport:
    """Open ``storage`` in optuna-dashboard and check ``study_name`` in headless chromium.

    Args:
        storage: a journal file (what ``search.py`` writes) or a storage URL, as optuna-dashboard takes it.
        screenshot: where the PNG of the trial page goes (its folder is created).
        study_name: the study; may be left out when the storage holds exactly one.
        attributes: user attributes that must be displayed on the trial page.
        chromium: the browser executable; found on PATH when None.
        timeout_s: bound of each wait (server start, each page).

    Raises:
        ValueError: no such storage / study, or no trial with all ``attributes``.
        RuntimeError: no chromium, the server or browser failed, or a page lacks what the API has.
    """
    storage = os.fspath(storage)
    if "://" not in storage and not os.path.isfile(storage):
        raise ValueError(f"storage {storage!r}: no such file")
    executable = chromium or find_chromium()
    if executable is None:
        raise RuntimeError("chromium not found: install it (apt-get install chromium) to check the dashboard")
    shot = Path(screenshot).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="repnas-dashboard-") as tmp:
        base = f"http://127.0.0.1:{_free_port()}"
        server = _start_server(storage, base.rsplit(":", 1)[1], Path(tmp, "server.log"))
        try:
            _wait_until_up(f"{base}/api/studies", server, Path(tmp, "server.log"), timeout_s)
            study_id, name = _pick_study(_get_json(f"{base}/api/studies")["study_summaries"], study_name)
            detail = _get_json(f"{base}/api/studies/{study_id}")
            number, expected = _pick_trial(detail["trials"], attributes, name, detail["directions"])
            url = f"{base}/dashboard/studies/{study_id}/trials?numbers={number}"
            with HeadlessChromium(executable, Path(tmp), timeout_s) as browser:
                browser.goto(f"{base}/dashboard/studies/{study_id}")
                browser.wait_for_text(f"{name} (id={study_id})", f"the study page of {name!r}")
                browser.goto(url)
                browser.wait_for_text(f"Trial {number} (trial_id=", f"the page of trial {number} of {name!r}")
                where = browser.show_lines([f"{k} {v}" for k, v in expected.items()])
                shot.write_bytes(browser.screenshot())
        finally:
            kill_group(server)
    missing = [k for k, w in zip(expected, where) if w == "missing"]
    if missing:
        raise RuntimeError(f"trial {number} of {name!r}: user attribute(s) {missing} not displayed "
                           f"(the API has {expected})")
    visible = tuple(k for k, w in zip(expected, where) if w == "visible")
    return DashboardReport(name, study_id, len(detail["trials"]), number, expected, visible, shot, url)


def _pick_study(summaries: list[dict[str, Any]], name: str | None) -> tuple[int, str]:
    names = {s["study_name"]: int(s["study_id"]) for s in summaries}
    if name is None and len(names) == 1:
        name = next(iter(names))
    if name is None:
        raise ValueError(f"the storage holds {len(names)} studies, {sorted(names)}: name one (--study)")
    if name not in names:
        raise ValueError(f"study {name!r} not served by the dashboard; it has {sorted(names)}")
    return names[name], name


def _pick_trial(trials: list[dict[str, Any]], attributes: tuple[str, ...], study: str,
                directions: list[str]) -> tuple[int, dict[str, str]]:
    """The trial to show, and its ``attributes`` as the API serialises them (what the page displays).

    Among trials that have all ``attributes``: the best complete one of a single-objective study,
    else the first complete one, else the first one.
    """
    def attrs(trial: dict[str, Any]) -> dict[str, str]:
        return {a["key"]: str(a["value"]) for a in trial["user_attrs"]}

    having = [t for t in trials if all(k in attrs(t) for k in attributes)]
    if not having:
        raise ValueError(f"study {study!r}: none of its {len(trials)} trials has user attributes {list(attributes)}")
    complete = [t for t in having if t["state"] == "Complete" and t.get("values")]
    if complete and len(directions) == 1:
        sign = -1.0 if directions[0] == "maximize" else 1.0
        complete.sort(key=lambda t: sign * float(t["values"][0]))
    chosen = (complete or having)[0]
    return int(chosen["number"]), {k: attrs(chosen)[k] for k in attributes}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(storage: str, port: str, log: Path) -> subprocess.Popen[bytes]:
    # The console script users run, from this interpreter's environment first.
    exe = Path(sys.executable).parent / "optuna-dashboard"
    cmd = [str(exe) if exe.exists() else "optuna-dashboard", storage,
           "--host", "127.0.0.1", "--port", port, "--server", "wsgiref", "--quiet"]
    with open(log, "wb") as out:
        # Own process group, so that _kill reaches everything it starts.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"optuna-dashboard exited with {server.returncode}: {log.read_text()[-1000:]}")
        try:
            _get_json(url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"optuna-dashboard did not answer {url} within {timeout_s:.0f} s")


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("storage", help="the study storage: a journal file such as studies.db, or a URL")
    parser.add_argument("--study", help="study name (default: the only study in the storage)")
    parser.add_argument("--screenshot", help="PNG to write (default: dashboard.png beside the storage)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="bound of each wait (default: 60)")
    args = parser.parse_args(argv)
    shot = args.screenshot or str(Path(args.storage).resolve().parent / "dashboard.png")
    try:
        report = check_dashboard(args.storage, shot, study_name=args.study, timeout_s=args.timeout_s)
    except (ValueError, RuntimeError) as e:
        parser.exit(1, f"error: {e}\n")
    print(f"study {report.study_name!r} (id={report.study_id}, {report.n_trials} trials) loads in optuna-dashboard; "
          f"trial {report.trial_number} shows " + ", ".join(f"{k}={v}" for k, v in report.attributes_seen.items()))
    print(f"screenshot: {report.screenshot} (showing {', '.join(report.attributes_in_screenshot) or 'none of them'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
