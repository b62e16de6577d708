"""pytest's view of the package's own modules (collected for their doctests).

The gateway's two modules refuse to import without their extra (they say which to install);
without it, they are left out of the doctest collection as their tests skip, instead of two
collection errors for a user who installed only `.[test]`.
"""

from __future__ import annotations

import importlib.util

collect_ignore = [
    path for path, needs in [("livepplx/integrations/litellm_proxy.py", "litellm"),
                             ("livepplx/integrations/prometheus.py", "prometheus_client")]
    if importlib.util.find_spec(needs) is None
]
