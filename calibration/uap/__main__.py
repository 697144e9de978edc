"""``python -m calibration.uap``."""

from calibration.uap.cli import main

raise SystemExit(main())
