"""The race the Py4J-thread tests stage: another Python thread's gateway call outlasts the main
thread's, so the main thread's next call is served by another connection (another Java thread)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Source for the scripts (``jvm`` must be the gateway's JVM view by the time it is called).
REORDER_CONNECTIONS = """
def reorder_connections(delay_s):
    other = threading.Thread(target=lambda: (time.sleep(0.2), jvm.java.lang.Thread.sleep(int(delay_s * 1000))))
    other.start()
    jvm.java.lang.Thread.sleep(int(delay_s * 500))
    other.join()
"""


def run_race_script(script: str, prefixes: tuple[str, ...], timeout_s: float = 180) -> list[str]:
    """Runs a race script in a fresh Python (a fresh gateway) and returns its lines that start with ``prefixes``."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    return [line for line in done.stdout.splitlines() if line.startswith(prefixes)]
