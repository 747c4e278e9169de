"""One lock for work that touches state a Python process holds once for all its threads.

Candidates are scored, and code-mode programs prepared, in parallel threads of one process (the
orchestrator, or the scorecard service), and these break when two threads do them at once:

- CPython 3.11's ``compile`` and ``ast.parse`` ("SystemError: AST constructor recursion depth
  mismatch": a second candidate was lost to it);
- building or unpickling a MACE model: e3nn generates its modules' code by torch.fx tracing,
  whose patcher is a module global ("AssertionError: CURRENT_PATCHER is None in finally block"),
  and which patches ``torch.nn.Module.__call__`` for the whole process while it traces, so a
  forward pass in another thread meanwhile fails ("NameError: module is not installed as a
  submodule"): model evaluations take the lock too;
- torch's default dtype, which MACE sets around every graph it builds, so one thread's float32
  MD could hand another's float64 accuracy stage float32 positions.

So models are built, loaded and evaluated one thread at a time. On a CPU, torch's own threads
use the cores either way; MD sent to Ray runs in other processes and is not held back.
Reentrant: a helper that holds it may call another that takes it.
"""

from __future__ import annotations

import threading

GLOBALS_LOCK = threading.RLock()
