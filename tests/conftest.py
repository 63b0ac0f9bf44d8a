"""Test-session settings. Under CI (``CI`` set) hypothesis is derandomized, so that a CI run
of a commit is repeatable; locally it explores new examples on every run."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
