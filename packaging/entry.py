"""The frozen executable's entry point: the ``waolb`` (and ``kube-proxy``) command."""

from waolb.cli import main

raise SystemExit(main())
